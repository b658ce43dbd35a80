// rpc_bench: control-protocol calls per second over loopback, in-process
// server. Request and reply sizes default to a 64-key prefix lookup
// (~1.3 KB). Not a test: prints numbers, asserts nothing.
//
//   rpc_bench [--threads N] [--clients C] [--server-threads S] [--seconds T]
//             [--window W] [--request-bytes B] [--reply-bytes B] [--tls 0|1]
//
// --threads: caller threads in total, spread over --clients connections;
// with --window W > 0 each thread keeps W call_async in flight instead of
// making blocking calls. --tls 1: the server runs TLS on the control
// channel (runtime/rpc/tls.h), to measure what it costs.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/rpc/client.h"
#include "runtime/rpc/server.h"

using namespace kvpool;
using namespace kvpool::rpc;

namespace {

struct Options {
  int threads = 4;
  int clients = 1;
  int server_threads = 1;
  double seconds = 3;
  int window = 0;
  std::size_t request_bytes = 1300;
  std::size_t reply_bytes = 1300;
  bool tls = false;
};

bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (i + 1 >= argc) return false;
    const char* v = argv[++i];
    if (arg == "--threads")
      o.threads = std::atoi(v);
    else if (arg == "--clients")
      o.clients = std::atoi(v);
    else if (arg == "--server-threads")
      o.server_threads = std::atoi(v);
    else if (arg == "--seconds")
      o.seconds = std::atof(v);
    else if (arg == "--window")
      o.window = std::atoi(v);
    else if (arg == "--request-bytes")
      o.request_bytes = std::strtoull(v, nullptr, 10);
    else if (arg == "--reply-bytes")
      o.reply_bytes = std::strtoull(v, nullptr, 10);
    else if (arg == "--tls")
      o.tls = std::atoi(v) != 0;
    else
      return false;
  }
  return o.threads >= 1 && o.clients >= 1 && o.server_threads >= 1 && o.seconds > 0 && o.window >= 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, o)) {
    std::fprintf(stderr,
                 "usage: rpc_bench [--threads N] [--clients C] [--server-threads S] [--seconds T] [--window W] "
                 "[--request-bytes B] [--reply-bytes B] [--tls 0|1]\n");
    return 2;
  }
  const std::string reply(o.reply_bytes, 'r');
  ServerOptions server_options;
  server_options.threads = o.server_threads;
  server_options.server_id = "bench";
  // The secret the default discovery finds (KVPOOL_SECRET_FILE, else the
  // default path), made there if missing, as kvpool-coordinator does.
  server_options.create_secret = true;
  server_options.tls = o.tls;
  auto server = Server::start(server_options, [&reply](Request, Responder r) { r.reply(reply); });
  if (!server) {
    std::fprintf(stderr, "rpc_bench: %s\n", server.error().to_string().c_str());
    return 1;
  }
  std::vector<std::unique_ptr<Client>> clients;
  for (int c = 0; c < o.clients; ++c) {
    ClientOptions options;
    options.port = (*server)->port();
    options.role = Role::kWorker;
    options.client_id = "bench-" + std::to_string(c);
    auto client = Client::connect(options, Deadline::after(std::chrono::seconds(5)));
    if (!client) {
      std::fprintf(stderr, "rpc_bench: %s\n", client.error().to_string().c_str());
      return 1;
    }
    clients.push_back(std::move(*client));
  }

  const std::string request(o.request_bytes, 'k');
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> errors{0};
  std::vector<std::thread> threads;
  auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < o.threads; ++t) {
    Client* client = clients[static_cast<std::size_t>(t % o.clients)].get();
    threads.emplace_back([&, client] {
      std::uint64_t mine = 0;
      if (o.window == 0) {
        while (!stop.load(std::memory_order_relaxed)) {
          auto r = client->call(100, request, Deadline::after(std::chrono::seconds(10)));
          if (r)
            ++mine;
          else
            errors.fetch_add(1);
        }
      } else {
        // Keep `window` calls in flight; each completion starts the next.
        std::mutex mu;
        std::condition_variable cv;
        int in_flight = 0;
        std::function<void(Result<std::string>)> on_done;
        auto launch = [&] { client->call_async(100, request, Deadline::after(std::chrono::seconds(10)), on_done); };
        on_done = [&](Result<std::string> r) {
          if (r)
            ++mine;
          else
            errors.fetch_add(1);
          if (!stop.load(std::memory_order_relaxed)) {
            launch();
            return;
          }
          std::lock_guard lock(mu);
          --in_flight;
          cv.notify_one();
        };
        {
          std::lock_guard lock(mu);
          in_flight = o.window;
        }
        for (int i = 0; i < o.window; ++i) launch();
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return in_flight == 0; });
      }
      calls.fetch_add(mine);
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(o.seconds));
  stop = true;
  for (auto& t : threads) t.join();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double rate = static_cast<double>(calls.load()) / elapsed;
  std::printf(
      "rpc_bench: %s, %d client(s), %d caller thread(s)%s, %d server io thread(s), %zu B requests, %zu B replies: "
      "%.0f calls/s (%.0f keys/s at 64 keys/call), %llu errors\n",
      o.window == 0 ? "blocking calls" : "call_async", o.clients, o.threads,
      o.window == 0 ? "" : (", window " + std::to_string(o.window)).c_str(), o.server_threads, o.request_bytes,
      o.reply_bytes, rate, rate * 64, static_cast<unsigned long long>(errors.load()));
  clients.clear();
  (*server)->stop();
  return 0;
}
