// kvpool built without CUDA: the GPU path says so.
#include "kvpool/gpu.h"

namespace kvpool::gpu {

bool gpu_available(std::string* why) {
  if (why != nullptr) *why = "kvpool was built without CUDA";
  return false;
}

Result<std::unique_ptr<KvMover>> KvMover::create(Client&, NamespaceId, const KvLayout&, const KvTensors&,
                                                 const GpuOptions&) {
  return make_error(StatusCode::kUnimplemented, "gpu: kvpool was built without CUDA (no nvcc at configure time)");
}

Result<std::unique_ptr<KvMover>> KvMover::create_rows(Client&, NamespaceId, std::uint32_t, const GpuOptions&) {
  return make_error(StatusCode::kUnimplemented, "gpu: kvpool was built without CUDA (no nvcc at configure time)");
}

}  // namespace kvpool::gpu
