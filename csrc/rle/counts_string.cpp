// COCO counts strings: each count is written as a little-endian sequence of 5-bit groups,
// one character per group (value + 48, so ASCII 48-111). Bit 0x20 of a character means
// "more groups follow"; bit 0x10 of the last group is the sign (two's complement). For
// i > 2, count i is stored as a delta against count i - 2 (note: i > 2, not i >= 2).
#include "rle/rle.h"

#include <cstdio>

namespace sam_lightning::rle {
namespace {

constexpr int kFirstChar = 48;
constexpr int kLastChar = 111;
// 7 groups hold 35 bits: enough for any delta of two 32-bit counts.
constexpr int kMaxGroups = 7;

std::string describe_char(uint8_t ch) {
  char text[32];
  if (ch >= 32 && ch < 127) {
    std::snprintf(text, sizeof(text), "'%c' (0x%02x)", ch, ch);
  } else {
    std::snprintf(text, sizeof(text), "0x%02x", ch);
  }
  return text;
}

}  // namespace

std::string check_size(int64_t h, int64_t w) {
  if (h <= 0 || w <= 0) {
    return "invalid size [" + std::to_string(h) + ", " + std::to_string(w) +
           "]: height and width must be positive";
  }
  if (static_cast<uint64_t>(h) > kMaxPixels / static_cast<uint64_t>(w)) {
    return "size [" + std::to_string(h) + ", " + std::to_string(w) +
           "] has more pixels than 32-bit COCO counts allow (4294967295)";
  }
  return {};
}

std::string decompress(const uint8_t* chars, int64_t length, Counts& counts) {
  counts.clear();
  counts.reserve(static_cast<size_t>(length));  // every value takes at least one character
  int64_t pos = 0;
  while (pos < length) {
    const int64_t start = pos;
    int64_t value = 0;
    int groups = 0;
    const int first = chars[pos] - kFirstChar;
    bool more = true;
    if (first >= 0 && first < 0x20) {  // fast path: a one-character value (small delta)
      value = (first & 0x10) ? first - 0x20 : first;
      ++pos;
      more = false;
    }
    while (more) {
      if (pos >= length) {
        return "truncated counts string: the last character (position " +
               std::to_string(length - 1) + ") has the continuation bit set";
      }
      const uint8_t ch = chars[pos];
      if (ch < kFirstChar || ch > kLastChar) {
        return "invalid character " + describe_char(ch) + " at position " +
               std::to_string(pos) + " (COCO counts use ASCII 48-111, '0'-'o')";
      }
      if (groups == kMaxGroups) {
        return "count value starting at position " + std::to_string(start) +
               " overflows (more than 7 characters)";
      }
      const int group = ch - kFirstChar;
      value |= static_cast<int64_t>(group & 0x1f) << (5 * groups);
      more = (group & 0x20) != 0;
      ++pos;
      ++groups;
      if (!more && (group & 0x10)) {
        value -= int64_t{1} << (5 * groups);  // sign-extend the last group
      }
    }
    const size_t index = counts.size();
    if (index > 2) value += counts[index - 2];
    if (value < 0) {
      return "negative count " + std::to_string(value) + " at index " + std::to_string(index) +
             " after delta decoding";
    }
    if (value > static_cast<int64_t>(UINT32_MAX)) {
      return "count " + std::to_string(value) + " at index " + std::to_string(index) +
             " overflows 32 bits";
    }
    counts.push_back(static_cast<Count>(value));
  }
  return {};
}

std::string check_total(const Counts& counts, int64_t h, int64_t w) {
  uint64_t total = 0;
  for (Count c : counts) total += c;
  const uint64_t pixels = static_cast<uint64_t>(h) * static_cast<uint64_t>(w);
  if (total != pixels) {
    return "counts sum to " + std::to_string(total) + " but size " + std::to_string(h) + "x" +
           std::to_string(w) + " has " + std::to_string(pixels) + " pixels";
  }
  return {};
}

void compress(const Count* counts, int64_t num_counts, std::string& out) {
  const size_t begin = out.size();
  out.resize(begin + static_cast<size_t>(num_counts) * kMaxGroups);
  char* dst = out.data() + begin;
  for (int64_t i = 0; i < num_counts; ++i) {
    int64_t value = counts[i];
    if (i > 2) value -= counts[i - 2];
    bool more = true;
    while (more) {
      int group = static_cast<int>(value & 0x1f);
      value >>= 5;  // arithmetic shift keeps the sign
      more = (group & 0x10) ? value != -1 : value != 0;
      if (more) group |= 0x20;
      *dst++ = static_cast<char>(group + kFirstChar);
    }
  }
  out.resize(static_cast<size_t>(dst - out.data()));
}

}  // namespace sam_lightning::rle
