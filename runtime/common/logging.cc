#include "runtime/common/logging.h"

#include <cstdlib>
#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace kvpool::log {
namespace {

struct Registry {
  std::mutex mu;
  spdlog::sink_ptr sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  spdlog::level::level_enum level = spdlog::level::info;
  Registry() {
    if (const char* env = std::getenv("KVPOOL_LOG_LEVEL")) {
      auto parsed = spdlog::level::from_str(env);
      // from_str returns off for unknown names; only accept a real "off".
      if (parsed != spdlog::level::off || std::string_view(env) == "off") level = parsed;
    }
  }
};

Registry& registry() {
  static Registry* r = new Registry();  // leaked: loggers outlive static destructors
  return *r;
}

}  // namespace

std::shared_ptr<spdlog::logger> get(std::string_view module) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  std::string name(module);
  if (auto existing = spdlog::get(name)) return existing;
  auto logger = std::make_shared<spdlog::logger>(name, r.sink);
  logger->set_level(r.level);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ %n[%P] %v");
  spdlog::register_logger(logger);
  return logger;
}

bool set_log_level(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") return false;
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  r.level = parsed;
  spdlog::apply_all([&](std::shared_ptr<spdlog::logger> l) { l->set_level(parsed); });
  return true;
}

}  // namespace kvpool::log
