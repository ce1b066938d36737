// Streaming parser of COCO counts strings (see counts_string.cpp for the format), shared
// by decompress() and the measures that need no stored counts (area, bounding box).
#pragma once

#include <string>

#include "rle/rle.h"

namespace sam_lightning::rle {
namespace parser {

constexpr int kFirstChar = 48;
constexpr int kLastChar = 111;

// Descriptions of the problems (cold paths, out of line).
std::string truncated(int64_t length);
std::string bad_char(uint8_t ch, int64_t pos);
std::string too_long(int64_t start);
std::string bad_value(int64_t value, int64_t index);

// Decodes the multi-character value starting at chars[pos] (or reports the problem) and
// advances pos past it.
inline bool read_long_value(const uint8_t* chars, int64_t length, int64_t& pos, int64_t& value,
                            std::string& problem) {
  const int64_t start = pos;
  value = 0;
  for (int groups = 0;; ++groups) {
    if (pos >= length) {
      problem = truncated(length);
      return false;
    }
    const uint8_t ch = chars[pos];
    if (ch < kFirstChar || ch > kLastChar) {
      problem = bad_char(ch, pos);
      return false;
    }
    if (groups == kMaxCharsPerCount) {
      problem = too_long(start);
      return false;
    }
    const int group = ch - kFirstChar;
    value |= static_cast<int64_t>(group & 0x1f) << (5 * groups);
    ++pos;
    if ((group & 0x20) == 0) {
      if (group & 0x10) value -= int64_t{1} << (5 * (groups + 1));  // sign-extend
      return true;
    }
  }
}

// Calls emit(count) for each count of the string in order. Returns "" when the string is
// well formed, else the first problem (emit may have seen counts before it).
template <typename Emit>
std::string parse_counts(const uint8_t* chars, int64_t length, Emit&& emit) {
  std::string problem;
  int64_t before_last = 0, last = 0;  // counts[index - 2], counts[index - 1]
  int64_t pos = 0;
  for (int64_t index = 0; pos < length; ++index) {
    int64_t value;
    const unsigned first = static_cast<unsigned>(chars[pos]) - kFirstChar;
    const unsigned second =
        pos + 1 < length ? static_cast<unsigned>(chars[pos + 1]) - kFirstChar : 0x40;
    // Values of one or two characters (95% of them) are decoded inline: the first group
    // of a two-character value has the continuation bit, the second not.
    if (first < 0x20) {
      value = static_cast<int64_t>(first ^ 0x10) - 0x10;
      pos += 1;
    } else if (first < 0x40 && second < 0x20) {
      value = (first & 0x1f) + (static_cast<int64_t>(second ^ 0x10) - 0x10) * 32;
      pos += 2;
    } else if (!read_long_value(chars, length, pos, value, problem)) {
      return problem;
    }
    if (index > 2) value += before_last;  // counts after the third are deltas
    if (static_cast<uint64_t>(value) > UINT32_MAX) return bad_value(value, index);
    emit(static_cast<Count>(value));
    before_last = last;
    last = value;
  }
  return {};
}

}  // namespace parser
}  // namespace sam_lightning::rle
