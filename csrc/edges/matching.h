// Deterministic correspondence of two boundary maps (the BSDS benchmark's correspondPixels
// task): pairs (p, g) of a predicted and a ground-truth boundary pixel at most `radius` apart
// (dy^2 + dx^2 <= radius^2) are candidate matches, each pixel is matched at most once, and
// the matching has the largest possible number of pairs.
//
// The Berkeley matcher solves a min-cost assignment (CSA) on a graph whose outlier edges are
// drawn at random, so it is not deterministic and, when the sparse random outlier edges
// cannot absorb the unmatched pixels cheaply, matches slightly fewer pairs than the maximum.
// This matcher is exact and deterministic:
//  1. greedy, by increasing distance: for each distance (ascending), for each predicted pixel
//     in row-major order that is still free, the first free ground-truth pixel at exactly that
//     distance, in offset order (dy, then dx);
//  2. Hopcroft-Karp augmentation from that matching to a maximum one: breadth-first layers
//     from the free predicted pixels (row-major order), then depth-first augmenting paths
//     from each free predicted pixel in row-major order, trying candidates nearest first.
// Short pairs are preferred where it costs no pair, but the total distance is not minimised.
// sam_lightning/ops/_edges_reference.py implements the same steps in Python.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace sam_lightning {
namespace edges {

struct Offset {
  int32_t dy, dx, d2;
};

// Offsets with dy^2 + dx^2 <= radius^2, |dy| < h and |dx| < w, ordered by (d2, dy, dx).
inline std::vector<Offset> match_offsets(double radius, int64_t h, int64_t w) {
  const int64_t r = static_cast<int64_t>(std::ceil(radius));
  const int64_t ry = std::min(r, h - 1), rx = std::min(r, w - 1);
  std::vector<Offset> offsets;
  for (int64_t dy = -ry; dy <= ry; ++dy) {
    for (int64_t dx = -rx; dx <= rx; ++dx) {
      const int64_t d2 = dy * dy + dx * dx;
      if (static_cast<double>(d2) <= radius * radius) {
        offsets.push_back({static_cast<int32_t>(dy), static_cast<int32_t>(dx),
                           static_cast<int32_t>(d2)});
      }
    }
  }
  std::sort(offsets.begin(), offsets.end(), [](const Offset& a, const Offset& b) {
    if (a.d2 != b.d2) return a.d2 < b.d2;
    if (a.dy != b.dy) return a.dy < b.dy;
    return a.dx < b.dx;
  });
  return offsets;
}

// Ground-truth pixels of one map as node ids on a grid framed by `pad` pixels of -1 (so that
// offsets up to the radius need no bounds checks): ids in row-major order, -1 elsewhere.
struct GroundTruthGrid {
  int64_t h = 0, w = 0, pad = 0, stride = 0;
  std::vector<int32_t> id;   // (h + 2 pad) x (w + 2 pad)
  std::vector<int32_t> pixel;  // node id -> row-major pixel index y * w + x
  std::vector<int32_t> steps;  // grid step of each offset, in the offsets' order
  std::vector<int32_t> rank;   // rank of each offset's distance among the distinct ones
  int32_t num_ranks = 0;

  GroundTruthGrid(const uint8_t* gt, int64_t h_, int64_t w_, int64_t row_stride,
                  const std::vector<Offset>& offsets)
      : h(h_), w(w_) {
    for (const Offset& o : offsets) pad = std::max<int64_t>({pad, std::abs(o.dy), std::abs(o.dx)});
    stride = w + 2 * pad;
    id.assign(static_cast<size_t>((h + 2 * pad) * stride), -1);
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) {
        if (gt[y * row_stride + x]) {
          id[(y + pad) * stride + x + pad] = static_cast<int32_t>(pixel.size());
          pixel.push_back(static_cast<int32_t>(y * w + x));
        }
      }
    }
    for (size_t k = 0; k < offsets.size(); ++k) {
      steps.push_back(static_cast<int32_t>(offsets[k].dy * stride + offsets[k].dx));
      if (k > 0 && offsets[k].d2 != offsets[k - 1].d2) ++num_ranks;
      rank.push_back(num_ranks);
    }
    if (!offsets.empty()) ++num_ranks;
  }

  int64_t size() const { return static_cast<int64_t>(pixel.size()); }
  int64_t cell(int64_t y, int64_t x) const { return (y + pad) * stride + x + pad; }
};

// Maximum matching of predicted pixels against one GroundTruthGrid; buffers are reused
// across calls.
class Matcher {
 public:
  // `pred` holds the predicted pixels as row-major indices y * w + x, ascending. Afterwards
  // mate_pred[i] is the ground-truth node matched to pred[i] (or -1) and mate_gt[j] the
  // index in `pred` matched to node j (or -1). Returns the number of pairs.
  int64_t match(const std::vector<int32_t>& pred, const GroundTruthGrid& grid) {
    build(pred, grid);
    greedy(grid.num_ranks);
    while (layer()) {
      std::copy(start_.begin(), start_.end() - 1, cursor_.begin());
      for (size_t v = 0; v < node_.size(); ++v) {
        if (mate_node_[v] < 0) augment(static_cast<int32_t>(v));
      }
    }
    mate_pred.assign(pred.size(), -1);
    int64_t pairs = 0;
    for (size_t v = 0; v < node_.size(); ++v) {
      if (mate_node_[v] >= 0) {
        mate_pred[node_[v]] = mate_node_[v];
        mate_gt[mate_node_[v]] = node_[v];
        ++pairs;
      }
    }
    return pairs;
  }

  std::vector<int32_t> mate_pred, mate_gt;

 private:
  static constexpr int32_t kInf = std::numeric_limits<int32_t>::max();

  // Candidate lists (CSR) of the predicted pixels that have at least one candidate.
  void build(const std::vector<int32_t>& pred, const GroundTruthGrid& grid) {
    node_.clear();
    start_.assign(1, 0);
    adj_.clear();
    adj_rank_.clear();
    for (size_t i = 0; i < pred.size(); ++i) {
      const int64_t y = pred[i] / grid.w, x = pred[i] % grid.w;
      const int32_t* base = grid.id.data() + grid.cell(y, x);
      const size_t before = adj_.size();
      for (size_t k = 0; k < grid.steps.size(); ++k) {
        const int32_t g = base[grid.steps[k]];
        if (g >= 0) {
          adj_.push_back(g);
          adj_rank_.push_back(grid.rank[k]);
        }
      }
      TORCH_CHECK(adj_.size() < static_cast<size_t>(kInf),
                  "boundary matching: more than 2^31 candidate pairs; use a smaller max_dist");
      if (adj_.size() > before) {
        node_.push_back(static_cast<int32_t>(i));
        start_.push_back(static_cast<int32_t>(adj_.size()));
      }
    }
    mate_node_.assign(node_.size(), -1);
    gt_node_.assign(static_cast<size_t>(grid.size()), -1);
    mate_gt.assign(static_cast<size_t>(grid.size()), -1);
    cursor_.assign(node_.size(), 0);
    dist_.assign(node_.size(), kInf);
  }

  void link(int32_t v, int32_t g) {
    mate_node_[v] = g;
    gt_node_[g] = v;
  }

  // Candidates by increasing distance rank, then node, then offset order (a stable counting
  // sort of the CSR order); each pair whose two pixels are still free is matched.
  void greedy(int32_t num_ranks) {
    bucket_.assign(static_cast<size_t>(num_ranks) + 1, 0);
    for (const int32_t r : adj_rank_) ++bucket_[r + 1];
    for (int32_t r = 0; r < num_ranks; ++r) bucket_[r + 1] += bucket_[r];
    order_.resize(adj_.size());
    order_gt_.resize(adj_.size());
    for (size_t v = 0; v < node_.size(); ++v) {
      for (int32_t e = start_[v]; e < start_[v + 1]; ++e) {
        const int32_t slot = bucket_[adj_rank_[e]]++;
        order_[slot] = static_cast<int32_t>(v);
        order_gt_[slot] = adj_[e];
      }
    }
    for (size_t k = 0; k < order_.size(); ++k) {
      const int32_t v = order_[k], g = order_gt_[k];
      if (mate_node_[v] < 0 && gt_node_[g] < 0) link(v, g);
    }
  }

  // Breadth-first layers from the free nodes; true when a free ground-truth pixel is
  // reachable (its layer is found_).
  bool layer() {
    queue_.clear();
    for (size_t v = 0; v < node_.size(); ++v) {
      dist_[v] = mate_node_[v] < 0 ? 0 : kInf;
      if (mate_node_[v] < 0) queue_.push_back(static_cast<int32_t>(v));
    }
    found_ = kInf;
    for (size_t head = 0; head < queue_.size(); ++head) {
      const int32_t v = queue_[head];
      if (dist_[v] >= found_) continue;
      for (int32_t e = start_[v]; e < start_[v + 1]; ++e) {
        const int32_t u = gt_node_[adj_[e]];
        if (u < 0) {
          if (found_ == kInf) found_ = dist_[v] + 1;
        } else if (dist_[u] == kInf) {
          dist_[u] = dist_[v] + 1;
          queue_.push_back(u);
        }
      }
    }
    return found_ != kInf;
  }

  // Depth-first search for an augmenting path from free node `root` along the layers
  // (iterative; each node's candidates are tried in order, once per phase).
  bool augment(int32_t root) {
    stack_.assign(1, root);
    via_.clear();
    while (!stack_.empty()) {
      const int32_t v = stack_.back();
      bool descended = false;
      while (cursor_[v] < start_[v + 1]) {
        const int32_t g = adj_[cursor_[v]++];
        const int32_t u = gt_node_[g];
        if (u < 0) {
          if (dist_[v] + 1 == found_) {
            via_.push_back(g);
            for (size_t k = 0; k < stack_.size(); ++k) link(stack_[k], via_[k]);
            return true;
          }
        } else if (dist_[u] == dist_[v] + 1) {
          via_.push_back(g);
          stack_.push_back(u);
          descended = true;
          break;
        }
      }
      if (!descended) {
        dist_[v] = kInf;
        stack_.pop_back();
        if (!via_.empty()) via_.pop_back();
      }
    }
    return false;
  }

  std::vector<int32_t> node_;       // node -> index in pred
  std::vector<int32_t> start_;      // CSR row starts (nodes + 1)
  std::vector<int32_t> adj_;        // candidate ground-truth nodes, nearest first
  std::vector<int32_t> adj_rank_;   // distance rank of each candidate
  std::vector<int32_t> mate_node_;  // node -> ground-truth node or -1
  std::vector<int32_t> gt_node_;    // ground-truth node -> node or -1
  std::vector<int32_t> bucket_, order_, order_gt_;  // greedy: candidates by distance
  std::vector<int32_t> cursor_, dist_, queue_, stack_, via_;
  int32_t found_ = kInf;
};

}  // namespace edges
}  // namespace sam_lightning
