#pragma once
// One named spdlog logger per module ("transport", "pool", ...), created on
// first use, all sharing one stderr sink so lines from threads do not tear.
// The level comes from KVPOOL_LOG_LEVEL (trace, debug, info, warn, error, off;
// default info) or set_log_level().

#include <memory>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace kvpool::log {

std::shared_ptr<spdlog::logger> get(std::string_view module);

// Sets the level of every module logger, present and future. Returns false
// when `level` is not a level name.
bool set_log_level(std::string_view level);

}  // namespace kvpool::log
