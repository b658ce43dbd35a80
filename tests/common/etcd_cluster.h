#pragma once
// A real etcd (Debian's etcd-server) for tests: one member or three, on
// 127.0.0.1 ports found by binding port 0 and releasing it, data in a
// temporary directory. start() waits until every member reports healthy;
// a member that fails to bind (the port was taken meanwhile) makes it try
// again with new ports. The destructor kills the members and removes the
// data.

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "runtime/common/subprocess.h"
#include "runtime/etcd/etcd_client.h"
#include "tests/common/test_util.h"

namespace kvpool::testing {

inline constexpr const char* kEtcdBinary = "/usr/bin/etcd";

inline bool etcd_available() { return ::access(kEtcdBinary, X_OK) == 0; }

// A port the OS just handed out and took back: free unless someone else
// grabs it before etcd binds (start() retries then).
inline std::uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  std::uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

class EtcdCluster {
 public:
  struct Member {
    std::string name;
    std::uint16_t client_port = 0;
    std::uint16_t peer_port = 0;
    std::optional<Subprocess> process;
    std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port); }
  };

  // nullptr when etcd does not come up healthy (after a few tries).
  static std::unique_ptr<EtcdCluster> start(int members = 1) {
    std::unique_ptr<EtcdCluster> c(new EtcdCluster());
    static int counter = 0;
    c->dir_ = "/tmp/kvpool-etcd-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
    for (int attempt = 0; attempt < 4; ++attempt) {
      if (c->try_start(members)) return c;
      c->kill_all();
    }
    return nullptr;
  }

  ~EtcdCluster() {
    kill_all();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // "127.0.0.1:P1,127.0.0.1:P2,..."
  std::string endpoints() const {
    std::string s;
    for (const auto& m : members_) s += (s.empty() ? "" : ",") + m.endpoint();
    return s;
  }
  std::vector<etcd::Endpoint> endpoint_list() const {
    std::vector<etcd::Endpoint> v;
    for (const auto& m : members_) v.push_back({"127.0.0.1", m.client_port});
    return v;
  }
  etcd::ClientOptions client_options(std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) const {
    return {endpoint_list(), timeout};
  }
  Member& member(std::size_t i) { return members_.at(i); }
  std::size_t size() const { return members_.size(); }

  // SIGKILL one member (the others keep quorum when there are three).
  void kill_member(std::size_t i) {
    auto& m = members_.at(i);
    if (m.process) {
      m.process->kill(SIGKILL);
      (void)m.process->wait(Deadline::after(std::chrono::seconds(10)));
      m.process.reset();
    }
  }

  // The member that leads etcd's raft group now; -1 when none answers.
  int raft_leader() const {
    for (std::size_t i = 0; i < members_.size(); ++i) {
      if (!members_[i].process) continue;
      auto client = etcd::Client::create({{{"127.0.0.1", members_[i].client_port}}, std::chrono::milliseconds(1000)});
      if (!client) continue;
      auto text = (*client)->post("/v3/maintenance/status", "{}");
      if (!text) continue;
      // {"header": {"member_id": "X", ...}, "leader": "Y", ...}
      auto field = [&](const std::string& name, std::size_t from) {
        auto k = text->find("\"" + name + "\":\"", from);
        if (k == std::string::npos) return std::string();
        k += name.size() + 4;
        return text->substr(k, text->find('"', k) - k);
      };
      const std::string me = field("member_id", 0);
      const std::string leader = field("leader", text->find('}'));
      if (!me.empty() && me == leader) return static_cast<int>(i);
    }
    return -1;
  }

  bool healthy(std::size_t i) const {
    auto client = etcd::Client::create({{{"127.0.0.1", members_[i].client_port}}, std::chrono::milliseconds(1000)});
    return client && (*client)->health({"127.0.0.1", members_[i].client_port}).ok();
  }

 private:
  EtcdCluster() = default;

  bool try_start(int n) {
    members_.clear();
    members_.resize(n);
    std::string initial;
    for (int i = 0; i < n; ++i) {
      members_[i].name = "m" + std::to_string(i);
      members_[i].client_port = free_port();
      members_[i].peer_port = free_port();
      initial += (i ? "," : "") + members_[i].name + "=http://127.0.0.1:" + std::to_string(members_[i].peer_port);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    std::filesystem::create_directories(dir_, ec);
    const std::string token = "kvpool-test-" + std::to_string(::getpid()) + "-" + std::to_string(members_[0].peer_port);
    for (auto& m : members_) {
      const std::string client = "http://127.0.0.1:" + std::to_string(m.client_port);
      const std::string peer = "http://127.0.0.1:" + std::to_string(m.peer_port);
      auto p = Subprocess::spawn(
          {kEtcdBinary, "--name", m.name, "--data-dir", dir_ + "/" + m.name, "--listen-client-urls", client,
           "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
           "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", token,
           "--logger", "zap", "--log-outputs", dir_ + "/" + m.name + ".log", "--log-level", "warn"});
      if (!p) return false;
      m.process.emplace(std::move(*p));
    }
    const Deadline deadline = Deadline::after(scaled(std::chrono::seconds(20)));
    while (!deadline.expired()) {
      bool all = true;
      for (std::size_t i = 0; i < members_.size(); ++i) {
        // A member that exited (port taken) will never be healthy.
        if (members_[i].process->wait(Deadline::after(std::chrono::milliseconds(0)))) {
          members_[i].process.reset();
          return false;
        }
        all = all && healthy(i);
      }
      if (all) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  void kill_all() {
    for (std::size_t i = 0; i < members_.size(); ++i) kill_member(i);
  }

  std::string dir_;
  std::vector<Member> members_;
};

}  // namespace kvpool::testing
