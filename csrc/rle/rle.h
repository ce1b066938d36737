// COCO run-length encoding (RLE) algorithms, independent of torch so that other callers
// (a CUDA host path, a standalone tool) can reuse them.
//
// An RLE of an h x w mask is a list of run lengths ("counts") over the pixels in
// column-major order (x outer, y inner), alternating background/foreground and starting
// with background (the first count is 0 when pixel (0, 0) is foreground). Counts are
// 32-bit unsigned as in pycocotools' maskApi.c, so a mask has at most 2^32 - 1 pixels.
// Results match pycocotools bit for bit, including its quirks (see rle_math.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sam_lightning::rle {

using Count = uint32_t;
using Counts = std::vector<Count>;

constexpr uint64_t kMaxPixels = UINT32_MAX;

// ---- counts strings (counts_string.cpp) ----------------------------------------------

// Empty when h x w is a valid RLE size, else a description of the problem.
std::string check_size(int64_t h, int64_t w);

// Parses a COCO counts string into `counts`. Returns "" on success, else a description
// of the first problem (bad character, truncated value, overflow, negative count).
std::string decompress(const uint8_t* chars, int64_t length, Counts& counts);

// Empty when counts summing to `total` cover exactly h * w pixels, else a description.
std::string check_total(uint64_t total, int64_t h, int64_t w);
std::string check_total(const Counts& counts, int64_t h, int64_t w);

// A count takes at most 7 characters (35 bits hold any delta of two 32-bit counts).
constexpr int kMaxCharsPerCount = 7;

// Writes the COCO counts string of `counts` to `out`, which must have room for
// num_counts * kMaxCharsPerCount characters; returns the number of characters written.
int64_t compress(const Count* counts, int64_t num_counts, char* out);

// Appends the COCO counts string of `counts` to `out`.
void compress(const Count* counts, int64_t num_counts, std::string& out);

// ---- masks <-> counts (mask_codec.cpp) -------------------------------------------------

// A read-only h x w mask of bytes with arbitrary element strides; nonzero = foreground.
struct MaskView {
  const uint8_t* data;
  int64_t height, width;
  int64_t stride_h, stride_w;
};

// Reusable buffers of encode(); keep one per thread. Their sizes only grow, so that a
// thread encoding many masks allocates (and zero-fills) them once.
struct EncodeScratch {
  Counts counts;                            // the result: its first encode() elements
  std::vector<uint64_t> band, column_bits;  // row-major masks: packed rows, columns
};

// Run lengths of `mask` in column-major order (identical to pycocotools' rleEncode for
// 0/1 masks), written to the front of scratch.counts; returns how many there are. Pixels
// are packed 64 at a time into bit words of one column (transposing 64 x 64 blocks when
// rows are contiguous), where run boundaries are the set bits of word ^ (word << 1).
int64_t encode(const MaskView& mask, EncodeScratch& scratch);

// Writes the h x w row-major uint8 mask (0/1) of counts that sum to h * w.
void decode_row_major(const Counts& counts, int64_t h, int64_t w, uint8_t* out);

// ---- measures on counts (rle_math.cpp) ---------------------------------------------------

// Number of foreground pixels (sum of the odd-indexed counts).
uint64_t area(const Counts& counts);

// Bounding box [x, y, width, height] exactly as pycocotools' rleToBbox.
void to_bbox(const Counts& counts, int64_t h, int64_t w, double box[4]);

// area() and to_bbox() straight from a counts string, validated exactly as decompress()
// then check_total() would (same problems), without storing the counts.
std::string area_of_string(const uint8_t* chars, int64_t length, int64_t h, int64_t w,
                           uint64_t& area);
std::string bbox_of_string(const uint8_t* chars, int64_t length, int64_t h, int64_t w,
                           double box[4]);

// Whether pycocotools' bbIou prefilter lets the pair through (box overlap > 0).
bool boxes_overlap(const double dt[4], const double gt[4]);

// Rewrites counts without zero-length runs (except a leading 0 when the mask starts with
// foreground). pycocotools' rleIou and rleMerge walks stop early on zero-length runs in the
// middle (wrong results, heap overflows in rleMerge), so iou() and merge() need this form.
void canonicalize(Counts& counts);

// Intersection-over-union of two canonical RLEs of the same size as pycocotools' rleIou;
// with `crowd`, the union is replaced by the area of `dt`.
double iou(const Counts& dt, const Counts& gt, bool crowd);

// Union (or intersection) of two canonical RLEs of the same size with pycocotools'
// rleMerge walk, into `out` (canonical too).
void merge(const Counts& a, const Counts& b, bool intersect, Counts& out);

}  // namespace sam_lightning::rle
