// Area, bounding box, IoU and merge on counts, following pycocotools' maskApi.c step by
// step so that results are identical. Area and bounding box also accept non-canonical
// counts (zero-length runs in the middle) exactly as pycocotools does; IoU and merge take
// canonical counts, on which pycocotools' walks are correct.
#include <algorithm>

#include "rle/counts_parser.h"

namespace sam_lightning::rle {

uint64_t area(const Counts& counts) {
  uint64_t total = 0;
  for (size_t k = 1; k < counts.size(); k += 2) total += counts[k];
  return total;
}

std::string area_of_string(const uint8_t* chars, int64_t length, int64_t h, int64_t w,
                           uint64_t& area) {
  uint64_t total = 0, foreground = 0;
  bool odd = false;  // whether the next count is a foreground run
  std::string problem = parser::parse_counts(chars, length, [&](Count c) {
    total += c;
    foreground += odd ? c : 0;
    odd = !odd;
  });
  if (problem.empty()) problem = check_total(total, h, w);
  area = foreground;
  return problem;
}

namespace {

// pycocotools' rleToBbox, quirks included, fed with (background, foreground) pairs:
//  * the number of counts is rounded down to even (a trailing background run is ignored);
//  * zero-length foreground runs are skipped, so when every foreground run is empty (but
//    there are at least two counts) nothing updates the initial box [w, h] .. [0, 0] and
//    the width and height wrap around in uint32 (0 - w + 1);
//  * when a foreground run starts in one column and ends in a later one, the box spans the
//    full height (the run wraps around the bottom of the column).
// Instead of dividing every pixel index by the height, the column of the last point is
// kept and moved forward (points come in increasing order for valid counts; any order
// gives some box, which callers discard along with invalid counts).
class BoxBuilder {
 public:
  BoxBuilder(int64_t h, int64_t w)
      : height_(static_cast<uint32_t>(h)), xs_(static_cast<uint32_t>(w)), ys_(height_) {}

  void add_pair(Count background, Count foreground) {
    any_pair_ = true;
    cumulative_ += background;
    if (foreground == 0) return;
    uint32_t x, y;
    locate(cumulative_, x, y);  // first pixel of the run
    const uint32_t x_start = x;
    include(x, y);
    cumulative_ += foreground;
    locate(cumulative_ - 1, x, y);  // last pixel
    if (x_start < x) {
      ys_ = 0;
      ye_ = height_ - 1;
    }
    include(x, y);
  }

  void finish(double box[4]) const {
    if (!any_pair_) {
      box[0] = box[1] = box[2] = box[3] = 0;
      return;
    }
    box[0] = xs_;
    box[2] = static_cast<uint32_t>(xe_ - xs_ + 1);
    box[1] = ys_;
    box[3] = static_cast<uint32_t>(ye_ - ys_ + 1);
  }

 private:
  // Column x and row y of pixel t (uint32 arithmetic, as pycocotools).
  void locate(uint32_t t, uint32_t& x, uint32_t& y) {
    uint32_t offset = t - column_start_;
    if (offset >= height_) {  // t is in a later column (or, for invalid counts, earlier)
      if (t >= column_start_ && offset < 2 * static_cast<uint64_t>(height_)) {
        ++column_;
        column_start_ += height_;
      } else {
        column_ = t / height_;
        column_start_ = column_ * height_;
      }
      offset = t - column_start_;
    }
    x = column_;
    y = offset;
  }

  void include(uint32_t x, uint32_t y) {
    xs_ = std::min(xs_, x);
    xe_ = std::max(xe_, x);
    ys_ = std::min(ys_, y);
    ye_ = std::max(ye_, y);
  }

  uint32_t height_, xs_, ys_, xe_ = 0, ye_ = 0;
  uint32_t cumulative_ = 0;
  uint32_t column_ = 0, column_start_ = 0;  // column_start_ = column_ * height_
  bool any_pair_ = false;
};

}  // namespace

void to_bbox(const Counts& counts, int64_t h, int64_t w, double box[4]) {
  BoxBuilder box_builder(h, w);
  for (size_t j = 0; j + 1 < counts.size(); j += 2) box_builder.add_pair(counts[j], counts[j + 1]);
  box_builder.finish(box);
}

std::string bbox_of_string(const uint8_t* chars, int64_t length, int64_t h, int64_t w,
                           double box[4]) {
  BoxBuilder box_builder(h, w);
  uint64_t total = 0;
  Count background = 0;
  bool odd = false;  // whether the next count is a foreground run
  std::string problem = parser::parse_counts(chars, length, [&](Count c) {
    total += c;
    if (odd) box_builder.add_pair(background, c);
    background = c;
    odd = !odd;
  });
  if (problem.empty()) problem = check_total(total, h, w);
  if (problem.empty()) box_builder.finish(box);
  return problem;
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
