#include "runtime/common/secret.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace kvpool {
namespace {

namespace fs = std::filesystem;

// A fresh directory under /tmp, removed with everything in it at the end.
struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/kvpool-secret-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
  std::string path;
};

void write_file(const std::string& path, const std::string& contents, mode_t mode) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << contents;
  }
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// Sets an environment variable for one scope, restoring the old value.
struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  const char* name_;
  std::optional<std::string> old_;
};

const std::string kGoodKey(40, 'k');

}  // namespace

TEST_CASE("a secret file readable by its owner only loads, without its trailing newline", "[secret]") {
  TempDir dir;
  std::string path = dir.file("secret");
  mode_t mode = GENERATE(mode_t{0600}, mode_t{0400});
  write_file(path, kGoodKey + "\n", mode);
  auto s = load_secret(path);
  REQUIRE(s);
  CHECK(s->key() == kGoodKey);
  CHECK(s->path() == path);
}

TEST_CASE("a secret file that group or others may access is refused with the fix in the message", "[secret]") {
  TempDir dir;
  std::string path = dir.file("secret");
  mode_t mode = GENERATE(mode_t{0644}, mode_t{0640}, mode_t{0604}, mode_t{0620}, mode_t{0666});
  write_file(path, kGoodKey, mode);
  auto s = load_secret(path);
  REQUIRE(!s);
  CHECK(s.error().code() == StatusCode::kFailedPrecondition);
  CHECK(s.error().message().find(path) != std::string::npos);
  CHECK(s.error().message().find("chmod 600") != std::string::npos);
}

TEST_CASE("a secret file that is too short, missing or not a file is refused, naming the path", "[secret]") {
  TempDir dir;
  std::string path = dir.file("secret");
  SECTION("too short") {
    write_file(path, std::string(kMinSecretBytes - 1, 'k') + "\n\n", 0600);
    auto s = load_secret(path);
    REQUIRE(!s);
    CHECK(s.error().code() == StatusCode::kFailedPrecondition);
    CHECK(s.error().message().find("at least 32") != std::string::npos);
    CHECK(s.error().message().find(path) != std::string::npos);
  }
  SECTION("too long") {
    write_file(path, std::string(kMaxSecretBytes + 1, 'k'), 0600);
    CHECK(load_secret(path).error().code() == StatusCode::kFailedPrecondition);
  }
  SECTION("missing") {
    auto s = load_secret(path);
    REQUIRE(!s);
    CHECK(s.error().code() == StatusCode::kFailedPrecondition);
    CHECK(s.error().message().find(path) != std::string::npos);
    CHECK(s.error().message().find(kSecretFileEnv) != std::string::npos);
  }
  SECTION("a directory") {
    REQUIRE(::mkdir(path.c_str(), 0700) == 0);
    CHECK(load_secret(path).error().code() == StatusCode::kFailedPrecondition);
  }
}

TEST_CASE("the secret file is found by explicit path, then KVPOOL_SECRET_FILE, then the default path", "[secret]") {
  TempDir dir;
  std::string from_env = dir.file("env-secret");
  std::string explicit_path = dir.file("explicit-secret");
  write_file(from_env, std::string(32, 'e'), 0600);
  write_file(explicit_path, std::string(32, 'x'), 0600);
  {
    ScopedEnv env(kSecretFileEnv, from_env.c_str());
    CHECK(secret_path(explicit_path) == explicit_path);
    CHECK(load_secret(explicit_path)->key() == std::string(32, 'x'));
    CHECK(secret_path("") == from_env);
    CHECK(load_secret("")->key() == std::string(32, 'e'));
  }
  {
    ScopedEnv env(kSecretFileEnv, "");  // set but empty: as if unset
    CHECK(secret_path("") == default_secret_path());
  }
  {
    ScopedEnv env(kSecretFileEnv, nullptr);
    CHECK(secret_path("") == default_secret_path());
    ScopedEnv home("HOME", dir.path.c_str());
    if (::geteuid() == 0) {
      CHECK(default_secret_path() == "/etc/kvpool/secret");
    } else {
      CHECK(default_secret_path() == dir.path + "/.config/kvpool/secret");
    }
  }
}

TEST_CASE("load_or_create_secret makes a 0600 file once and then reads it back", "[secret]") {
  TempDir dir;
  std::string path = dir.file("a/b/secret");  // parents are created
  bool created = false;
  auto first = load_or_create_secret(path, &created);
  REQUIRE(first);
  CHECK(created);
  CHECK(first->key().size() == 64);
  CHECK(mode_of(path) == 0600);
  CHECK(mode_of(dir.file("a")) == 0700);
  auto second = load_or_create_secret(path, &created);
  REQUIRE(second);
  CHECK_FALSE(created);
  CHECK(second->key() == first->key());
  // No temporary files are left behind.
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir.file("a/b"))) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);

  SECTION("an existing file with bad permissions is refused, not replaced") {
    REQUIRE(::chmod(path.c_str(), 0644) == 0);
    auto s = load_or_create_secret(path, &created);
    REQUIRE(!s);
    CHECK(s.error().message().find("chmod 600") != std::string::npos);
    CHECK_FALSE(created);
  }
}

TEST_CASE("threads creating the secret at once all get the same one", "[secret]") {
  TempDir dir;
  std::string path = dir.file("secret");
  constexpr int kThreads = 8;
  std::vector<std::string> keys(kThreads);
  std::vector<int> created(kThreads, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      bool c = false;
      auto s = load_or_create_secret(path, &c);
      if (s) keys[i] = std::string(s->key());
      created[i] = c ? 1 : 0;
    });
  }
  for (auto& t : threads) t.join();
  CHECK(std::set<std::string>(keys.begin(), keys.end()).size() == 1);
  CHECK(keys[0].size() == 64);
  CHECK(std::count(created.begin(), created.end(), 1) == 1);
}

TEST_CASE("processes creating the secret at once all get the same one", "[secret]") {
  TempDir dir;
  std::string path = dir.file("secret");
  constexpr int kProcs = 6;
  int go[2];
  REQUIRE(::pipe(go) == 0);
  std::vector<std::pair<pid_t, int>> children;
  for (int i = 0; i < kProcs; ++i) {
    int out[2];
    REQUIRE(::pipe(out) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(out[0]);
      ::close(go[1]);
      char c;
      (void)!::read(go[0], &c, 1);  // start together: the parent closes the pipe
      auto s = load_or_create_secret(path);
      std::string key = s ? std::string(s->key()) : "error: " + s.error().message();
      (void)!::write(out[1], key.data(), key.size());
      ::_exit(s ? 0 : 1);
    }
    ::close(out[1]);
    children.emplace_back(pid, out[0]);
  }
  ::close(go[0]);
  ::close(go[1]);
  std::set<std::string> keys;
  for (auto& [pid, fd] : children) {
    std::string key;
    char buf[256];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof(buf))) > 0) key.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    keys.insert(key);
  }
  REQUIRE(keys.size() == 1);
  CHECK(keys.begin()->size() == 64);
  CHECK(load_secret(path)->key() == *keys.begin());
}

TEST_CASE("create_secret_file makes a new file and never overwrites one", "[secret]") {
  TempDir dir;
  std::string path = dir.file("new/secret");
  REQUIRE(create_secret_file(path).ok());
  CHECK(mode_of(path) == 0600);
  auto first = load_secret(path);
  REQUIRE(first);
  Status again = create_secret_file(path);
  CHECK(again.code() == StatusCode::kAlreadyExists);
  CHECK(load_secret(path)->key() == first->key());
}

TEST_CASE("hmac_sha256 matches RFC 4231 and MACs compare by content", "[secret]") {
  std::string mac = hmac_sha256("Jefe", "what do ya want for nothing?");
  const unsigned char want[] = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24,
                                0x26, 0x08, 0x95, 0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27,
                                0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};
  CHECK(mac == std::string(reinterpret_cast<const char*>(want), sizeof(want)));
  CHECK(constant_time_equal(mac, mac));
  CHECK_FALSE(constant_time_equal(mac, mac.substr(1)));
  std::string other = mac;
  other[31] ^= 1;
  CHECK_FALSE(constant_time_equal(mac, other));
  auto r1 = random_bytes(32);
  auto r2 = random_bytes(32);
  REQUIRE(r1);
  REQUIRE(r2);
  CHECK(r1->size() == 32);
  CHECK(*r1 != *r2);
}

}  // namespace kvpool
