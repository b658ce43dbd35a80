#include "runtime/metrics/registry.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdio>

namespace kvpool::metrics {
namespace {

enum class Type { kCounter, kGauge, kHistogram };

const char* type_name(Type t) {
  switch (t) {
    case Type::kCounter:
      return "counter";
    case Type::kGauge:
      return "gauge";
    case Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

std::string escape_help(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// `{a="x",b="y"}`, or "" with no labels; `extra` (the histogram's le) last.
std::string render_labels(const Labels& labels, const std::pair<std::string, std::string>* extra = nullptr) {
  if (labels.empty() && extra == nullptr) return {};
  std::string out = "{";
  bool first = true;
  auto one = [&](const std::pair<std::string, std::string>& l) {
    if (!first) out += ',';
    first = false;
    out += l.first;
    out += "=\"";
    out += escape_label_value(l.second);
    out += '"';
  };
  for (const auto& l : labels) one(l);
  if (extra != nullptr) one(*extra);
  out += '}';
  return out;
}

// A family as rendered: its metadata and sample lines.
struct Rendered {
  Type type = Type::kGauge;
  std::string help;
  std::vector<std::string> lines;
};

}  // namespace

std::string escape_label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // Integers (the common case: bytes, counts) print exactly.
  if (v == std::floor(v) && std::fabs(v) < 9.007199254740992e15) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  std::sort(bounds_.begin(), bounds_.end());
  buckets_ = std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1);
  for (std::size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) {
  // Bucket i counts bounds_[i-1] < v <= bounds_[i]; the last one is +Inf.
  std::size_t i = static_cast<std::size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.bounds = bounds_;
  std::uint64_t acc = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    acc += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(acc);
  }
  // Concurrent observations may land between the loads: report the bucket
  // total as the count so the exposition stays self-consistent.
  s.count = acc;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> latency_buckets() {
  return {50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
          50e-3, 100e-3, 250e-3, 500e-3, 1,    2.5,    5,    10};
}

struct Registry::Impl {
  struct Family {
    Type type;
    std::string help;
    // Series by rendered label string; unique_ptr keeps references stable.
    std::map<std::string, std::pair<Labels, std::unique_ptr<Counter>>> counters;
    std::map<std::string, std::pair<Labels, std::unique_ptr<Gauge>>> gauges;
    std::map<std::string, std::pair<Labels, std::unique_ptr<Histogram>>> histograms;
  };
  mutable std::mutex mu;
  std::map<std::string, Family> families;  // guarded by mu
  // Instruments handed out for a name already taken by another type: kept
  // alive, never rendered.
  std::vector<std::unique_ptr<Counter>> detached_counters;      // guarded by mu
  std::vector<std::unique_ptr<Gauge>> detached_gauges;          // guarded by mu
  std::vector<std::unique_ptr<Histogram>> detached_histograms;  // guarded by mu

  // Held while collectors run, so remove_collector() waits for a running one.
  mutable std::mutex collectors_mu;
  std::map<std::uint64_t, CollectFn> collectors;  // guarded by collectors_mu
  std::uint64_t next_collector = 1;               // guarded by collectors_mu

  Family* family(const std::string& name, const std::string& help, Type type) {
    auto [it, inserted] = families.try_emplace(name);
    if (inserted) {
      it->second.type = type;
      it->second.help = help;
    }
    if (it->second.type != type) {
      assert(false && "metric registered twice with different types");
      return nullptr;
    }
    return &it->second;
  }
};

Registry::Registry() : impl_(std::make_unique<Impl>()) {}
Registry::~Registry() = default;

Counter& Registry::counter(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(impl_->mu);
  Impl::Family* f = impl_->family(name, help, Type::kCounter);
  if (f == nullptr) return *impl_->detached_counters.emplace_back(std::make_unique<Counter>());
  auto& slot = f->counters[render_labels(labels)];
  if (!slot.second) slot = {labels, std::make_unique<Counter>()};
  return *slot.second;
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(impl_->mu);
  Impl::Family* f = impl_->family(name, help, Type::kGauge);
  if (f == nullptr) return *impl_->detached_gauges.emplace_back(std::make_unique<Gauge>());
  auto& slot = f->gauges[render_labels(labels)];
  if (!slot.second) slot = {labels, std::make_unique<Gauge>()};
  return *slot.second;
}

Histogram& Registry::histogram(const std::string& name, const std::string& help, std::vector<double> bounds,
                               const Labels& labels) {
  std::lock_guard lock(impl_->mu);
  Impl::Family* f = impl_->family(name, help, Type::kHistogram);
  if (f == nullptr) return *impl_->detached_histograms.emplace_back(std::make_unique<Histogram>(std::move(bounds)));
  auto& slot = f->histograms[render_labels(labels)];
  if (!slot.second) slot = {labels, std::make_unique<Histogram>(std::move(bounds))};
  return *slot.second;
}

std::uint64_t Registry::add_collector(CollectFn fn) {
  std::lock_guard lock(impl_->collectors_mu);
  std::uint64_t id = impl_->next_collector++;
  impl_->collectors.emplace(id, std::move(fn));
  return id;
}

void Registry::remove_collector(std::uint64_t id) {
  std::lock_guard lock(impl_->collectors_mu);
  impl_->collectors.erase(id);
}

std::string Registry::render() const {
  std::map<std::string, Rendered> out;
  {
    std::lock_guard lock(impl_->mu);
    for (const auto& [name, f] : impl_->families) {
      Rendered& r = out[name];
      r.type = f.type;
      r.help = f.help;
      for (const auto& [labels, c] : f.counters) {
        r.lines.push_back(name + labels + " " + format_value(static_cast<double>(c.second->value())));
      }
      for (const auto& [labels, g] : f.gauges) r.lines.push_back(name + labels + " " + format_value(g.second->value()));
      for (const auto& [labels, h] : f.histograms) {
        Histogram::Snapshot s = h.second->snapshot();
        for (std::size_t i = 0; i <= s.bounds.size(); ++i) {
          std::pair<std::string, std::string> le{"le", i < s.bounds.size() ? format_value(s.bounds[i]) : "+Inf"};
          r.lines.push_back(name + "_bucket" + render_labels(h.first, &le) + " " +
                            format_value(static_cast<double>(s.cumulative[i])));
        }
        r.lines.push_back(name + "_sum" + labels + " " + format_value(s.sum));
        r.lines.push_back(name + "_count" + labels + " " + format_value(static_cast<double>(s.count)));
      }
    }
  }
  {
    struct Sink : Collector {
      std::map<std::string, Rendered>* out;
      void add(Type type, const std::string& name, const std::string& help, const Labels& labels, double value) {
        auto [it, inserted] = out->try_emplace(name);
        if (inserted) {
          it->second.type = type;
          it->second.help = help;
        } else if (it->second.type != type) {
          return;  // a name clash with an instrument: keep the exposition valid
        }
        it->second.lines.push_back(name + render_labels(labels) + " " + format_value(value));
      }
      void gauge(const std::string& name, const std::string& help, const Labels& labels, double value) override {
        add(Type::kGauge, name, help, labels, value);
      }
      void counter(const std::string& name, const std::string& help, const Labels& labels, double value) override {
        add(Type::kCounter, name, help, labels, value);
      }
    } sink;
    sink.out = &out;
    std::lock_guard lock(impl_->collectors_mu);
    for (const auto& [id, fn] : impl_->collectors) fn(sink);
  }
  std::string text;
  for (const auto& [name, r] : out) {
    if (r.lines.empty()) continue;
    text += "# HELP " + name + " " + escape_help(r.help) + "\n";
    text += "# TYPE " + name + " " + type_name(r.type) + "\n";
    for (const auto& line : r.lines) {
      text += line;
      text += '\n';
    }
  }
  return text;
}

}  // namespace kvpool::metrics
