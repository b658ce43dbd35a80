#include "kvpool/gpu.h"
#include "runtime/gpu/plan.h"

namespace kvpool::gpu {

std::string layout_name(KvLayoutKind kind) {
  switch (kind) {
    case KvLayoutKind::kVllmPaged: return "vllm-paged";
    case KvLayoutKind::kVllmPagedSplit: return "vllm-paged-split";
    case KvLayoutKind::kHfContiguous: return "hf-contiguous";
  }
  return "unknown";
}

Result<Plan> make_plan(const KvLayout& l) {
  const std::uint64_t esz = dtype_bytes(l.dtype);
  if (esz == 0) return make_error(StatusCode::kInvalidArgument, "gpu layout: unknown dtype '" + l.dtype + "'");
  if (l.num_layers == 0 || l.num_kv_heads == 0 || l.head_dim == 0 || l.tokens_per_block == 0) {
    return make_error(StatusCode::kInvalidArgument, "gpu layout: layers, heads, head_dim and tokens_per_block must be > 0");
  }
  Plan p;
  const std::uint64_t token_bytes = l.num_kv_heads * l.head_dim * esz;
  switch (l.kind) {
    case KvLayoutKind::kVllmPaged:
    case KvLayoutKind::kVllmPagedSplit:
      if (l.num_pages == 0) return make_error(StatusCode::kInvalidArgument, "gpu layout: num_pages must be > 0");
      p.run_bytes = l.tokens_per_block * token_bytes;
      p.segs = 1;
      p.pages_per_row = l.num_pages;
      p.page_stride = p.run_bytes;
      p.row_stride = 0;
      p.pages = l.num_pages;
      p.tensor_bytes = l.num_pages * p.run_bytes;
      break;
    case KvLayoutKind::kHfContiguous:
      if (l.batch == 0 || l.max_seq == 0 || l.max_seq % l.tokens_per_block != 0) {
        return make_error(StatusCode::kInvalidArgument,
                          "gpu layout: batch must be > 0 and max_seq a nonzero multiple of tokens_per_block");
      }
      p.run_bytes = l.tokens_per_block * l.head_dim * esz;
      p.segs = l.num_kv_heads;
      p.seg_stride = l.max_seq * l.head_dim * esz;
      p.pages_per_row = l.max_seq / l.tokens_per_block;
      p.page_stride = p.run_bytes;
      p.row_stride = l.num_kv_heads * p.seg_stride;
      p.pages = l.batch * p.pages_per_row;
      p.tensor_bytes = l.batch * p.row_stride;
      break;
    default:
      return make_error(StatusCode::kInvalidArgument, "gpu layout: unknown kind");
  }
  if (p.run_bytes % 16 != 0) {
    return make_error(StatusCode::kInvalidArgument, "gpu layout: a page run of " + std::to_string(p.run_bytes) +
                                                        " bytes is not a multiple of 16");
  }
  p.units = 2 * l.num_layers * p.segs;
  p.layer_units = 2 * p.segs;
  p.block_bytes = p.units * p.run_bytes;
  return p;
}

Status check_block_bytes(std::uint64_t ns_block_bytes, const KvLayout& layout) {
  auto bb = block_bytes(layout);
  if (!bb) return bb.error();
  if (ns_block_bytes != *bb) {
    return Status(StatusCode::kInvalidArgument, "gpu: the namespace's blocks are " + std::to_string(ns_block_bytes) +
                                                    " bytes, the layout's " + std::to_string(*bb));
  }
  return Status();
}

Status validate(const KvLayout& layout) {
  auto p = make_plan(layout);
  return p ? Status() : p.error();
}

Result<std::uint64_t> block_bytes(const KvLayout& layout) {
  auto p = make_plan(layout);
  if (!p) return tl::unexpected(p.error());
  return p->block_bytes;
}

std::uint64_t page_count(const KvLayout& layout) {
  auto p = make_plan(layout);
  return p ? p->pages : 0;
}

NamespaceDescriptor namespace_for(const KvLayout& layout, const std::string& model_id, std::uint32_t tp_rank,
                                  std::uint32_t tp_size) {
  NamespaceDescriptor d;
  d.model_id = model_id;
  d.dtype = layout.dtype;
  d.num_layers = layout.num_layers;
  d.num_kv_heads = layout.num_kv_heads;
  d.head_dim = layout.head_dim;
  d.tokens_per_block = layout.tokens_per_block;
  d.layout = layout_name(layout.kind);
  d.tp_rank = tp_rank;
  d.tp_size = tp_size;
  auto bb = block_bytes(layout);
  d.block_bytes = bb ? *bb : 0;
  return d;
}

Result<std::vector<std::uint64_t>> tensor_bases(const KvLayout& layout, const Plan& plan, const KvTensors& t) {
  std::vector<std::uint64_t> bases;
  if (layout.kind == KvLayoutKind::kVllmPaged) {
    if (t.k.size() != layout.num_layers || !t.v.empty()) {
      return make_error(StatusCode::kInvalidArgument,
                        "gpu tensors: vllm-paged takes one combined tensor per layer (k) and no v");
    }
    for (void* kv : t.k) {
      if (kv == nullptr) return make_error(StatusCode::kInvalidArgument, "gpu tensors: null tensor");
      bases.push_back(reinterpret_cast<std::uint64_t>(kv));
      bases.push_back(reinterpret_cast<std::uint64_t>(kv) + plan.tensor_bytes);
    }
  } else {
    if (t.k.size() != layout.num_layers || t.v.size() != layout.num_layers) {
      return make_error(StatusCode::kInvalidArgument, "gpu tensors: one K and one V tensor per layer");
    }
    for (std::size_t i = 0; i < t.k.size(); ++i) {
      if (t.k[i] == nullptr || t.v[i] == nullptr) {
        return make_error(StatusCode::kInvalidArgument, "gpu tensors: null tensor");
      }
      bases.push_back(reinterpret_cast<std::uint64_t>(t.k[i]));
      bases.push_back(reinterpret_cast<std::uint64_t>(t.v[i]));
    }
  }
  for (auto b : bases) {
    if (b % 16 != 0) return make_error(StatusCode::kInvalidArgument, "gpu tensors: a tensor is not 16-byte aligned");
  }
  return bases;
}

}  // namespace kvpool::gpu
