#pragma once
// Registry: the metrics of one process (kvpool-agent, kvpool-coordinator),
// rendered in the Prometheus text exposition format (version 0.0.4) for the
// /metrics endpoint (http_server.h).
//
// Two kinds of metric:
// - instruments the code updates as things happen: Counter, Gauge and
//   Histogram (fixed bucket bounds). Updating one is a relaxed atomic add (a
//   histogram: one bucket search over a handful of bounds plus three atomic
//   adds): no lock, no allocation on the hot path. Create them once (that
//   takes the registry's lock) and keep the reference; it stays valid for the
//   registry's lifetime.
// - collectors: callbacks run at scrape time that report gauges and counters
//   read from state the process already keeps (CoordinatorCore::stats(),
//   agents()), so nothing is counted twice.
//
// Thread safety: every method is thread-safe. A collector runs on the
// scraping thread, with the registry's collector lock held: it must not call
// back into the registry.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace kvpool::metrics {

// Label name/value pairs, in the order they are rendered.
using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void inc(std::uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

class Gauge {
 public:
  void set(double v) { v_.store(v, std::memory_order_relaxed); }
  void add(double d) { v_.fetch_add(d, std::memory_order_relaxed); }
  double value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0.0};
};

class Histogram {
 public:
  // `bounds`: the buckets' upper bounds, ascending (+Inf is implicit).
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<std::uint64_t> cumulative;  // per bound, then +Inf (== count)
    double sum = 0;
    std::uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;  // bounds_.size() + 1
  std::atomic<double> sum_{0.0};
  std::atomic<std::uint64_t> count_{0};
};

// Latency buckets from 50 us to 10 s: control-protocol calls take tens of
// microseconds on one host, milliseconds across a cluster, seconds when
// something is wrong.
std::vector<double> latency_buckets();

// What a collector reports at scrape time.
class Collector {
 public:
  virtual ~Collector() = default;
  virtual void gauge(const std::string& name, const std::string& help, const Labels& labels, double value) = 0;
  virtual void counter(const std::string& name, const std::string& help, const Labels& labels, double value) = 0;
};
using CollectFn = std::function<void(Collector&)>;

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The instrument of that name and labels, created on first use. Names must
  // be valid Prometheus names (counters end in _total); asking for an
  // existing name with another type is a programming error (assert) and
  // returns a detached instrument.
  Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram& histogram(const std::string& name, const std::string& help, std::vector<double> bounds,
                       const Labels& labels = {});

  // Runs `fn` on every scrape until remove_collector(id). Returns the id.
  std::uint64_t add_collector(CollectFn fn);
  // After this returns, `fn` is not running and will not run again.
  void remove_collector(std::uint64_t id);

  // The whole exposition: every family with its HELP and TYPE lines,
  // families sorted by name.
  std::string render() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Text format helpers (exposed for tests and for collectors' label values).
std::string escape_label_value(const std::string& v);
std::string format_value(double v);

}  // namespace kvpool::metrics
