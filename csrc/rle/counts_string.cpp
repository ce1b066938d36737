// COCO counts strings: each count is written as a little-endian sequence of 5-bit groups,
// one character per group (value + 48, so ASCII 48-111). Bit 0x20 of a character means
// "more groups follow"; bit 0x10 of the last group is the sign (two's complement). For
// i > 2, count i is stored as a delta against count i - 2 (note: i > 2, not i >= 2).
#include "rle/counts_parser.h"

#include <cstdio>

namespace sam_lightning::rle {
namespace parser {

std::string truncated(int64_t length) {
  return "truncated counts string: the last character (position " + std::to_string(length - 1) +
         ") has the continuation bit set";
}

std::string bad_char(uint8_t ch, int64_t pos) {
  char text[32];
  if (ch >= 32 && ch < 127) {
    std::snprintf(text, sizeof(text), "'%c' (0x%02x)", ch, ch);
  } else {
    std::snprintf(text, sizeof(text), "0x%02x", ch);
  }
  return std::string("invalid character ") + text + " at position " + std::to_string(pos) +
         " (COCO counts use ASCII 48-111, '0'-'o')";
}

std::string too_long(int64_t start) {
  return "count value starting at position " + std::to_string(start) +
         " overflows (more than 7 characters)";
}

std::string bad_value(int64_t value, int64_t index) {
  if (value < 0) {
    return "negative count " + std::to_string(value) + " at index " + std::to_string(index) +
           " after delta decoding";
  }
  return "count " + std::to_string(value) + " at index " + std::to_string(index) +
         " overflows 32 bits";
}

}  // namespace parser

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
  return parser::parse_counts(chars, length, [&](Count c) { counts.push_back(c); });
}

std::string check_total(uint64_t total, int64_t h, int64_t w) {
  const uint64_t pixels = static_cast<uint64_t>(h) * static_cast<uint64_t>(w);
  if (total != pixels) {
    return "counts sum to " + std::to_string(total) + " but size " + std::to_string(h) + "x" +
           std::to_string(w) + " has " + std::to_string(pixels) + " pixels";
  }
  return {};
}

std::string check_total(const Counts& counts, int64_t h, int64_t w) {
  uint64_t total = 0;
  for (Count c : counts) total += c;
  return check_total(total, h, w);
}

// One character per value when -16 <= value < 16 (most deltas of neighbouring columns).
int64_t compress(const Count* counts, int64_t num_counts, char* out) {
  char* dst = out;
  for (int64_t i = 0; i < num_counts; ++i) {
    int64_t value = counts[i];
    if (i > 2) value -= counts[i - 2];
    if (static_cast<uint64_t>(value + 16) < 32) {
      *dst++ = static_cast<char>((value & 0x1f) + parser::kFirstChar);
      continue;
    }
    bool more = true;
    while (more) {
      int group = static_cast<int>(value & 0x1f);
      value >>= 5;  // arithmetic shift keeps the sign
      more = (group & 0x10) ? value != -1 : value != 0;
      if (more) group |= 0x20;
      *dst++ = static_cast<char>(group + parser::kFirstChar);
    }
  }
  return dst - out;
}

void compress(const Count* counts, int64_t num_counts, std::string& out) {
  const size_t begin = out.size();
  out.resize(begin + static_cast<size_t>(num_counts) * kMaxCharsPerCount);
  const int64_t written = compress(counts, num_counts, out.data() + begin);
  out.resize(begin + static_cast<size_t>(written));
}

}  // namespace sam_lightning::rle
