#include "tests/common/test_util.h"

#include <signal.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "runtime/common/secret.h"

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

namespace {

std::mutex g_dirs_mu;
std::vector<std::string>* g_dirs = nullptr;  // guarded by g_dirs_mu; leaked on purpose (used at exit)

void remove_dirs() {
  std::lock_guard lock(g_dirs_mu);
  if (g_dirs == nullptr) return;
  for (const std::string& d : *g_dirs) {
    std::error_code ec;
    std::filesystem::remove_all(d, ec);
  }
  g_dirs->clear();
}

}  // namespace

std::string make_secret_file() {
  char tmpl[] = "/tmp/kvpool-test-secret-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
  std::string dir = tmpl;
  {
    std::lock_guard lock(g_dirs_mu);
    if (g_dirs == nullptr) {
      g_dirs = new std::vector<std::string>();
      std::atexit(remove_dirs);
    }
    g_dirs->push_back(dir);
  }
  std::string path = dir + "/secret";
  if (Status s = create_secret_file(path); !s.ok()) throw std::runtime_error(s.to_string());
  return path;
}

std::string use_test_secret() {
  static const std::string path = [] {
    std::string p = make_secret_file();
    ::setenv(kSecretFileEnv, p.c_str(), 1);
    return p;
  }();
  return path;
}

namespace {

// The state letter of /proc/.../stat: the field after the parenthesised
// command name, which may itself hold spaces or parentheses.
char task_state(const std::filesystem::path& stat) {
  std::ifstream in(stat);
  std::string line;
  std::getline(in, line);
  auto close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() ? '?' : line[close + 2];
}

}  // namespace

bool freeze(pid_t pid, std::chrono::milliseconds within) {
  if (::kill(pid, SIGSTOP) != 0) return false;
  const auto until = std::chrono::steady_clock::now() + within;
  const std::filesystem::path tasks = "/proc/" + std::to_string(pid) + "/task";
  for (;;) {
    bool all = true;
    std::error_code ec;
    for (const auto& t : std::filesystem::directory_iterator(tasks, ec)) {
      const char st = task_state(t.path() / "stat");
      all = all && (st == 'T' || st == 't');
    }
    if (!ec && all) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace kvpool::testing
