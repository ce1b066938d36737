// Area, bounding box, IoU and merge on counts, following pycocotools' maskApi.c step by
// step so that results are identical. Area and bounding box also accept non-canonical
// counts (zero-length runs in the middle) exactly as pycocotools does; IoU and merge take
// canonical counts, on which pycocotools' walks are correct.
#include <algorithm>

#include "rle/rle.h"

namespace sam_lightning::rle {

uint64_t area(const Counts& counts) {
  uint64_t total = 0;
  for (size_t k = 1; k < counts.size(); k += 2) total += counts[k];
  return total;
}

// pycocotools' rleToBbox, quirks included:
//  * the number of counts is rounded down to even (a trailing background run is ignored);
//  * zero-length foreground runs are skipped, so when every foreground run is empty (but
//    there are at least two counts) nothing updates the initial box [w, h] .. [0, 0] and
//    the width and height wrap around in uint32 (0 - w + 1);
//  * when a foreground run starts in one column and ends in a later one, the box spans the
//    full height (the run wraps around the bottom of the column).
void to_bbox(const Counts& counts, int64_t h, int64_t w, double box[4]) {
  const uint32_t height = static_cast<uint32_t>(h);
  const size_t num = counts.size() / 2 * 2;
  if (num == 0) {
    box[0] = box[1] = box[2] = box[3] = 0;
    return;
  }
  uint32_t xs = static_cast<uint32_t>(w), ys = height, xe = 0, ye = 0;
  uint32_t cumulative = 0, x_start = 0;
  for (size_t j = 0; j < num; ++j) {
    cumulative += counts[j];
    if (counts[j | 1] == 0) continue;  // j | 1: the foreground run of this pair
    // Even j: first pixel of a foreground run; odd j: its last pixel.
    const uint32_t t = cumulative - static_cast<uint32_t>(j % 2);
    const uint32_t y = t % height;
    const uint32_t x = (t - y) / height;
    if (j % 2 == 0) {
      x_start = x;
    } else if (x_start < x) {
      ys = 0;
      ye = height - 1;
    }
    xs = std::min(xs, x);
    xe = std::max(xe, x);
    ys = std::min(ys, y);
    ye = std::max(ye, y);
  }
  box[0] = xs;
  box[2] = static_cast<uint32_t>(xe - xs + 1);
  box[1] = ys;
  box[3] = static_cast<uint32_t>(ye - ys + 1);
}

void canonicalize(Counts& counts) {
  size_t size = 1;  // counts[0] stays, even when 0; run k has value k % 2
  for (size_t k = 1; k < counts.size(); ++k) {
    if (counts[k] == 0) continue;
    if ((k - size) % 2 == 1) {  // same value as the last kept run: extend it
      counts[size - 1] += counts[k];
    } else {
      counts[size++] = counts[k];
    }
  }
  counts.resize(std::min(size, counts.size()));
}

// The overlap test of pycocotools' bbIou, in the same double arithmetic.
bool boxes_overlap(const double dt[4], const double gt[4]) {
  const double w = std::min(dt[2] + dt[0], gt[2] + gt[0]) - std::max(dt[0], gt[0]);
  if (w <= 0) return false;
  const double h = std::min(dt[3] + dt[1], gt[3] + gt[1]) - std::max(dt[1], gt[1]);
  return h > 0;
}

namespace {

// Walks two canonical RLEs of the same size segment by segment (a segment ends wherever
// either RLE starts a new run), as rleIou and rleMerge do. For each step it calls
// visit(length, a, b, next_a, next_b, remaining): the values of both RLEs on the segment,
// their values on the next one, and the pixels left in both current runs (0 at the end).
// The first step is zero-length when an RLE starts with foreground.
template <typename Visit>
void walk(const Counts& a, const Counts& b, Visit&& visit) {
  uint32_t ca = a[0], cb = b[0];
  bool va = false, vb = false;
  size_t ia = 1, ib = 1;
  uint32_t remaining = 1;
  while (remaining > 0) {
    const uint32_t c = std::min(ca, cb);
    const bool segment_a = va, segment_b = vb;
    ca -= c;
    if (ca == 0 && ia < a.size()) {
      ca = a[ia++];
      va = !va;
    }
    cb -= c;
    if (cb == 0 && ib < b.size()) {
      cb = b[ib++];
      vb = !vb;
    }
    remaining = ca + cb;
    visit(c, segment_a, segment_b, va, vb, remaining);
  }
}

}  // namespace

double iou(const Counts& dt, const Counts& gt, bool crowd) {
  uint32_t intersection = 0, union_area = 0;
  walk(dt, gt, [&](uint32_t c, bool va, bool vb, bool, bool, uint32_t) {
    if (va || vb) {
      union_area += c;
      if (va && vb) intersection += c;
    }
  });
  if (intersection == 0) {
    union_area = 1;
  } else if (crowd) {
    union_area = static_cast<uint32_t>(area(dt));
  }
  return static_cast<double>(intersection) / static_cast<double>(union_area);
}

// rleMerge: a run of the result ends whenever the combined value changes between two
// steps, or at the end.
void merge(const Counts& a, const Counts& b, bool intersect, Counts& out) {
  out.clear();
  uint32_t run = 0;
  bool value = false;
  walk(a, b, [&](uint32_t c, bool, bool, bool va, bool vb, uint32_t remaining) {
    run += c;
    const bool previous = value;
    value = intersect ? (va && vb) : (va || vb);
    if (value != previous || remaining == 0) {
      out.push_back(run);
      run = 0;
    }
  });
}

}  // namespace sam_lightning::rle
