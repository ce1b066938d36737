// Masks <-> counts. Counts run over pixels in column-major order. Encoding packs the
// pixels of a column 64 at a time into bit words (bit i = pixel p + i is foreground); a run
// starts at every set bit of word ^ (word << 1 | last bit of the previous word), the
// previous word being the end of the previous column at y == 0 (pixel -1 is background).
// Row-major masks are packed row by row and transposed 64 x 64 bits at a time, so dense
// masks cost no more than sparse ones (there is no per-pixel branch anywhere).
#include "rle/rle.h"

#include <algorithm>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace sam_lightning::rle {
namespace {

constexpr int kBits = 64;  // pixels per bit word

inline uint64_t low_bits(int n) { return n == kBits ? ~uint64_t{0} : (uint64_t{1} << n) - 1; }

// Bit i set iff p[i] != 0, for the 64 bytes p[0..63].
inline uint64_t pack64(const uint8_t* p) {
#if defined(__SSE2__)
  const __m128i zero = _mm_setzero_si128();
  uint64_t zeros = 0;
  for (int i = 0; i < 4; ++i) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i));
    const auto mask = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, zero)));
    zeros |= uint64_t{mask} << (16 * i);
  }
  return ~zeros;
#else
  constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7fULL;
  uint64_t bits = 0;
  for (int i = 0; i < 8; ++i) {
    uint64_t word = 0;
    for (int b = 0; b < 8; ++b) word |= uint64_t{p[8 * i + b]} << (8 * b);  // little-endian
    // Nonzero bytes -> 0x01 (no carries between bytes), then byte b -> bit b: the product
    // puts bit 8b of `word` at bit 56 + b and nothing else in the top byte.
    word = ((((word & kLow7) + kLow7) | word) >> 7) & 0x0101010101010101ULL;
    bits |= ((word * 0x0102040810204080ULL) >> 56) << (8 * i);
  }
  return bits;
#endif
}

// pack64 of the n <= 64 bytes p[0..n-1] (higher bits zero).
inline uint64_t pack(const uint8_t* p, int n) {
  if (n == kBits) return pack64(p);
  uint8_t padded[kBits] = {};
  std::memcpy(padded, p, static_cast<size_t>(n));
  return pack64(padded);
}

// Makes `buffer` hold at least n elements (never shrinks it).
template <typename T>
void grow(std::vector<T>& buffer, int64_t n) {
  if (buffer.size() < static_cast<size_t>(n)) buffer.resize(static_cast<size_t>(n));
}

// Transposes a 64 x 64 bit matrix in place: bit j of a[i] <-> bit i of a[j]. Swaps the
// off-diagonal 32 x 32 blocks, then 16 x 16 blocks within each, and so on.
void transpose64(uint64_t a[kBits]) {
  uint64_t m = 0x00000000ffffffffULL;  // low half of each 2j-bit group
  for (int j = 32; j != 0; j >>= 1, m ^= m << j) {
    for (int k = 0; k < kBits; k = ((k | j) + 1) & ~j) {  // k with bit j clear
      const uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
      a[k] ^= t << j;
      a[k | j] ^= t;
    }
  }
}

// Turns pixels, fed up to 64 at a time in column-major order, into counts written to the
// front of a buffer that grows geometrically (keeping its size between masks).
class RunBuilder {
 public:
  explicit RunBuilder(Counts& counts) : counts_(counts) {}

  // Pixels [pixel, pixel + n), n <= 64; bit i of `bits` is pixel + i (bits >= n clear).
  void add(uint64_t bits, int n, uint64_t pixel) {
    const uint64_t starts = (bits ^ (bits << 1 | previous_)) & low_bits(n);
    previous_ = (bits >> (n - 1)) & 1;
    if (starts == 0) return;
    reserve(kBits);
    Count* out = counts_.data() + size_;
    Count* const first = out;
    for (uint64_t s = starts; s != 0; s &= s - 1) {
      const uint64_t start = pixel + static_cast<uint64_t>(__builtin_ctzll(s));
      *out++ = static_cast<Count>(start - run_start_);
      run_start_ = start;
    }
    size_ += out - first;
  }

  int64_t finish(uint64_t pixels) {
    reserve(1);
    counts_[size_++] = static_cast<Count>(pixels - run_start_);
    return size_;
  }

 private:
  void reserve(int64_t n) {
    const auto needed = static_cast<size_t>(size_ + n);
    if (needed > counts_.size()) counts_.resize(std::max(needed, 2 * counts_.size()));
  }

  Counts& counts_;
  int64_t size_ = 0;
  uint64_t run_start_ = 0;
  uint64_t previous_ = 0;  // the last pixel fed (pixel -1 is background)
};

// Columns are contiguous (stride_h == 1): pack each column (or the whole mask when the
// columns follow each other) 64 bytes at a time.
void encode_columns(const MaskView& m, RunBuilder& runs) {
  const bool contiguous = m.stride_w == m.height || m.width == 1;
  const int64_t segment = contiguous ? m.height * m.width : m.height;
  const int64_t num_segments = contiguous ? 1 : m.width;
  uint64_t pixel = 0;
  for (int64_t s = 0; s < num_segments; ++s) {
    const uint8_t* p = m.data + s * m.stride_w;
    int64_t i = 0;
    for (; i + kBits <= segment; i += kBits) runs.add(pack64(p + i), kBits, pixel + i);
    if (i < segment) {
      const int n = static_cast<int>(segment - i);
      runs.add(pack(p + i, n), n, pixel + i);
    }
    pixel += segment;
  }
}

// Rows are contiguous (stride_w == 1). For each band of 64 rows: pack the rows (reading
// the mask sequentially), then transpose each 64 x 64 block into column words. Once all
// bands are done, feed the columns in order.
void encode_rows(const MaskView& m, EncodeScratch& scratch, RunBuilder& runs) {
  const int64_t h = m.height, w = m.width;
  const int64_t blocks = (h + kBits - 1) / kBits;  // words per column
  const int64_t strips = (w + kBits - 1) / kBits;  // words per row
  grow(scratch.band, kBits * strips);             // strip s, row r at s * 64 + r
  grow(scratch.column_bits, w * blocks);          // column x, band b at x * blocks + b
  uint64_t* const band = scratch.band.data();
  uint64_t* const columns = scratch.column_bits.data();
  auto strip_width = [&](int64_t s) {
    return static_cast<int>(std::min<int64_t>(kBits, w - s * kBits));
  };
  for (int64_t b = 0; b < blocks; ++b) {
    const int height = static_cast<int>(std::min<int64_t>(kBits, h - b * kBits));
    const uint8_t* row = m.data + b * kBits * m.stride_h;
    for (int r = 0; r < height; ++r, row += m.stride_h) {
      for (int64_t s = 0; s < strips; ++s) {
        band[s * kBits + r] = pack(row + s * kBits, strip_width(s));
      }
    }
    for (int64_t s = 0; s < strips; ++s) {
      uint64_t* block = band + s * kBits;
      const int width = strip_width(s);
      uint64_t* out = columns + s * kBits * blocks + b;  // column 64 s, band b
      uint64_t differ = 0;  // bits of the rows that differ from the block's first row
      for (int r = 1; r < height; ++r) differ |= block[r] ^ block[0];
      if (differ == 0) {  // every column is constant over the block: no transpose needed
        for (int j = 0; j < width; ++j) {
          out[j * blocks] = (0 - ((block[0] >> j) & 1)) & low_bits(height);
        }
        continue;
      }
      std::fill(block + height, block + kBits, 0);
      transpose64(block);
      for (int j = 0; j < width; ++j) out[j * blocks] = block[j];
    }
  }
  const int last_height = static_cast<int>(h - (blocks - 1) * kBits);
  for (int64_t x = 0; x < w; ++x) {
    const uint64_t* words = columns + x * blocks;
    uint64_t pixel = static_cast<uint64_t>(x) * static_cast<uint64_t>(h);
    for (int64_t b = 0; b + 1 < blocks; ++b, pixel += kBits) runs.add(words[b], kBits, pixel);
    runs.add(words[blocks - 1], last_height, pixel);
  }
}

// Any other strides: gather 64 pixels of a column at a time.
void encode_strided(const MaskView& m, RunBuilder& runs) {
  uint64_t pixel = 0;
  for (int64_t x = 0; x < m.width; ++x) {
    const uint8_t* column = m.data + x * m.stride_w;
    for (int64_t y0 = 0; y0 < m.height; y0 += kBits) {
      const int n = static_cast<int>(std::min<int64_t>(kBits, m.height - y0));
      uint64_t bits = 0;
      for (int i = 0; i < n; ++i) {
        bits |= uint64_t{column[(y0 + i) * m.stride_h] != 0} << i;
      }
      runs.add(bits, n, pixel);
      pixel += n;
    }
  }
}

}  // namespace

int64_t encode(const MaskView& mask, EncodeScratch& scratch) {
  RunBuilder runs{scratch.counts};
  if (mask.stride_h == 1 || mask.height == 1) {
    encode_columns(mask, runs);
  } else if (mask.stride_w == 1 || mask.width == 1) {
    MaskView rows = mask;
    if (mask.width == 1) rows.stride_w = 1;
    encode_rows(rows, scratch, runs);
  } else {
    encode_strided(mask, runs);
  }
  return runs.finish(static_cast<uint64_t>(mask.height) * static_cast<uint64_t>(mask.width));
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
