// Masks <-> counts. Counts run over pixels in column-major order while masks are usually
// stored row-major; instead of transposing, both directions work on *transitions*: pixel
// p = x * h + y starts a new run when it differs from pixel p - 1, i.e. from the pixel
// above it (y > 0) or from the bottom pixel of the previous column (y == 0; pixel -1 is
// background). Within a row these are found 8 pixels at a time with 64-bit words.
#include "rle/rle.h"

#include <cstring>

namespace sam_lightning::rle {
namespace {

constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7fULL;
constexpr uint64_t kHigh = 0x8080808080808080ULL;
constexpr uint64_t kOnes = 0x0101010101010101ULL;

inline uint64_t load_word(const uint8_t* p) {
  uint64_t word;
  std::memcpy(&word, p, sizeof(word));
  return word;
}

// Per byte: one fixed bit set iff the pixel is foreground. Binary (0/1) input already has
// this form (bit 0); other input maps nonzero bytes to 0x80 without carries between bytes.
template <bool Binary>
inline uint64_t foreground_bits(uint64_t word) {
  if constexpr (Binary) {
    return word;
  } else {
    return (((word & kLow7) + kLow7) | word) & kHigh;
  }
}

template <bool Binary>
constexpr uint64_t kForegroundWord = Binary ? kOnes : kHigh;

// Index of the lowest-addressed nonzero byte of a nonzero word.
inline int first_byte(uint64_t word) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return __builtin_clzll(word) >> 3;
#else
  return __builtin_ctzll(word) >> 3;
#endif
}

// Clears the lowest-addressed nonzero byte of a word whose bytes hold at most one bit.
inline uint64_t clear_first_byte(uint64_t word) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return word & ~(uint64_t{1} << (63 - __builtin_clzll(word)));
#else
  return word & (word - 1);
#endif
}

// Accumulates counts from run boundaries given in increasing pixel order.
struct RunBuilder {
  Counts& counts;
  uint64_t run_start = 0;
  void boundary(uint64_t pixel) {
    counts.push_back(static_cast<Count>(pixel - run_start));
    run_start = pixel;
  }
  void finish(uint64_t pixels) { counts.push_back(static_cast<Count>(pixels - run_start)); }
};

// Columns are contiguous (stride_h == 1): scan each column linearly, skipping 8 pixels at
// a time while they all equal the current run's value.
template <bool Binary>
void encode_columns(const MaskView& m, RunBuilder& runs) {
  const bool contiguous = m.stride_w == m.height || m.width == 1;
  const int64_t segment = contiguous ? m.height * m.width : m.height;
  const int64_t num_segments = contiguous ? 1 : m.width;
  uint64_t value_word = 0;  // kForegroundWord<Binary> while inside a foreground run
  uint64_t pixel = 0;
  for (int64_t s = 0; s < num_segments; ++s) {
    const uint8_t* p = m.data + s * m.stride_w;
    int64_t i = 0;
    for (; i + 8 <= segment; i += 8) {
      const uint64_t word = load_word(p + i);
      if (word == (value_word ? kOnes : 0)) continue;  // 8 pixels of 0/1 data continue the run
      uint64_t diff = foreground_bits<Binary>(word) ^ value_word;
      while (diff) {
        const int b = first_byte(diff);
        runs.boundary(pixel + i + b);
        value_word ^= kForegroundWord<Binary>;
        // Bytes after b are now compared against the flipped value; byte b and those
        // before it are done.
        diff ^= kForegroundWord<Binary>;
        diff = b == 7 ? 0 : diff & (~uint64_t{0} << (8 * (b + 1)));
      }
    }
    for (; i < segment; ++i) {
      if ((p[i] != 0) != (value_word != 0)) {
        runs.boundary(pixel + i);
        value_word ^= kForegroundWord<Binary>;
      }
    }
    pixel += segment;
  }
}

// Records the pixels x.. x + 7 of row y whose foreground differs from the row above.
template <bool Binary, typename Record>
inline void record_word(uint64_t row, uint64_t above, int64_t x, int64_t y, Record& record) {
  uint64_t diff = foreground_bits<Binary>(row) ^ foreground_bits<Binary>(above);
  for (; diff; diff = clear_first_byte(diff)) record(x + first_byte(diff), y);
}

// Rows are contiguous (stride_w == 1): record transitions between vertically adjacent
// pixels row by row, then bucket them by column (a stable counting sort keeps y sorted).
template <bool Binary>
void encode_rows(const MaskView& m, EncodeScratch& s, RunBuilder& runs) {
  const int64_t h = m.height, w = m.width;
  s.rec_x.clear();
  s.rec_y.clear();
  s.column_start.assign(w + 1, 0);
  auto record = [&](int64_t x, int64_t y) {
    s.rec_x.push_back(static_cast<uint32_t>(x));
    s.rec_y.push_back(static_cast<uint32_t>(y));
    ++s.column_start[x + 1];
  };
  const uint8_t* first_row = m.data;
  const uint8_t* last_row = m.data + (h - 1) * m.stride_h;
  for (int64_t x = 0; x < w; ++x) {  // y == 0: compare with the previous column's bottom
    const bool above = x > 0 && last_row[x - 1] != 0;
    if ((first_row[x] != 0) != above) record(x, 0);
  }
  for (int64_t y = 1; y < h; ++y) {
    const uint8_t* prev = m.data + (y - 1) * m.stride_h;
    const uint8_t* row = prev + m.stride_h;
    int64_t x = 0;
    for (; x + 16 <= w; x += 16) {  // identical bytes cannot differ in foreground
      const uint64_t a0 = load_word(row + x), a1 = load_word(row + x + 8);
      const uint64_t b0 = load_word(prev + x), b1 = load_word(prev + x + 8);
      if (((a0 ^ b0) | (a1 ^ b1)) == 0) continue;
      record_word<Binary>(a0, b0, x, y, record);
      record_word<Binary>(a1, b1, x + 8, y, record);
    }
    for (; x + 8 <= w; x += 8) {
      record_word<Binary>(load_word(row + x), load_word(prev + x), x, y, record);
    }
    for (; x < w; ++x) {
      if ((row[x] != 0) != (prev[x] != 0)) record(x, y);
    }
  }
  for (int64_t x = 0; x < w; ++x) s.column_start[x + 1] += s.column_start[x];
  const size_t num = s.rec_x.size();
  s.sorted_y.resize(num);
  for (size_t r = 0; r < num; ++r) s.sorted_y[s.column_start[s.rec_x[r]]++] = s.rec_y[r];
  // column_start[x] now holds the end of column x's bucket.
  size_t r = 0;
  for (int64_t x = 0; x < w; ++x) {
    const uint64_t column = static_cast<uint64_t>(x) * h;
    for (; r < s.column_start[x]; ++r) runs.boundary(column + s.sorted_y[r]);
  }
}

void encode_strided(const MaskView& m, RunBuilder& runs) {
  bool value = false;
  uint64_t pixel = 0;
  for (int64_t x = 0; x < m.width; ++x) {
    const uint8_t* column = m.data + x * m.stride_w;
    for (int64_t y = 0; y < m.height; ++y, ++pixel) {
      if ((column[y * m.stride_h] != 0) != value) {
        runs.boundary(pixel);
        value = !value;
      }
    }
  }
}

template <bool Binary>
void encode_typed(const MaskView& m, EncodeScratch& scratch, RunBuilder& runs) {
  if (m.stride_h == 1 || m.height == 1) {
    encode_columns<Binary>(m, runs);
  } else if (m.stride_w == 1 || m.width == 1) {
    MaskView rows = m;
    if (m.width == 1) rows.stride_w = 1;
    encode_rows<Binary>(rows, scratch, runs);
  } else {
    encode_strided(m, runs);
  }
}

}  // namespace

void encode(const MaskView& mask, EncodeScratch& scratch, Counts& counts) {
  counts.clear();
  RunBuilder runs{counts};
  if (mask.binary) {
    encode_typed<true>(mask, scratch, runs);
  } else {
    encode_typed<false>(mask, scratch, runs);
  }
  runs.finish(static_cast<uint64_t>(mask.height) * mask.width);
}

// Inverse of the transition idea: row 0 gets the value of the run covering each column's
// first pixel, every other run boundary (x, y > 0) toggles one byte, and a prefix XOR down
// the columns (row y ^= row y - 1, a sequential word-wise pass) turns toggles into values.
// Zero-length runs toggle the same byte twice and cancel, as they should.
void decode_row_major(const Counts& counts, int64_t h, int64_t w, uint8_t* out) {
  std::memset(out, 0, static_cast<size_t>(h * w));
  const uint64_t height = static_cast<uint64_t>(h);
  uint64_t pos = 0;
  uint64_t x = 0, column_start = 0;  // column x holds pixels [column_start, column_start + h)
  const size_t num = counts.size();
  for (size_t k = 0; k < num; ++k) {
    const uint64_t end = pos + counts[k];
    if (k & 1) {  // foreground: set row 0 of the columns starting inside [pos, end)
      uint64_t first = pos == column_start ? x : x + 1;
      for (uint64_t c = first; c * height < end; ++c) out[c] = 1;
    }
    pos = end;
    if (k + 1 == num) break;
    while (pos >= column_start + height) {
      ++x;
      column_start += height;
    }
    const uint64_t y = pos - column_start;
    if (y > 0) out[y * w + x] ^= 1;
  }
  for (int64_t y = 1; y < h; ++y) {
    const uint8_t* prev = out + (y - 1) * w;
    uint8_t* row = out + y * w;
    for (int64_t i = 0; i < w; ++i) row[i] ^= prev[i];
  }
}

}  // namespace sam_lightning::rle
