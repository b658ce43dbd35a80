// kvpool built without CUDA: the GPU path says so, after the same argument
// checks as the CUDA build (so a caller's mistake reads the same in both).
#include "kvpool/gpu.h"
#include "runtime/gpu/plan.h"

namespace kvpool::gpu {
namespace {
Status unimplemented() {
  return Status(StatusCode::kUnimplemented, "gpu: kvpool was built without CUDA (no nvcc at configure time)");
}
}  // namespace

bool gpu_available(std::string* why) {
  if (why != nullptr) *why = "kvpool was built without CUDA";
  return false;
}

Result<std::unique_ptr<KvMover>> KvMover::create(Client& client, NamespaceId ns, const KvLayout& layout,
                                                 const KvTensors&, const GpuOptions&) {
  auto nsb = client.block_bytes(ns);
  if (!nsb) return tl::unexpected(nsb.error());
  if (Status s = check_block_bytes(*nsb, layout); !s.ok()) return tl::unexpected(s);
  return tl::unexpected(unimplemented());
}

Result<std::unique_ptr<KvMover>> KvMover::create_rows(Client& client, NamespaceId ns, std::uint32_t,
                                                      const GpuOptions&, std::uint32_t) {
  auto nsb = client.block_bytes(ns);
  if (!nsb) return tl::unexpected(nsb.error());
  return tl::unexpected(unimplemented());
}

}  // namespace kvpool::gpu
