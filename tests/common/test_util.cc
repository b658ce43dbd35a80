#include "tests/common/test_util.h"

#include <cstdlib>

namespace kvpool::testing {

double time_scale() {
  static const double scale = [] {
    const char* env = std::getenv("KVPOOL_TEST_TIME_SCALE");
    if (env == nullptr) return 1.0;
    char* end = nullptr;
    double v = std::strtod(env, &end);
    return (end != env && v >= 1.0) ? v : 1.0;
  }();
  return scale;
}

}  // namespace kvpool::testing
