#pragma once
// Test helpers for /metrics: an HTTP GET over a plain socket, and a parser of
// the Prometheus text exposition format that also checks its structure
// (HELP and TYPE before a family's samples, no family split in two, numeric
// values, histogram buckets cumulative and ending in +Inf == _count).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <string>

namespace kvpool::testing {

struct HttpResponse {
  int status = 0;
  std::string headers;  // lower-cased
  std::string body;
};

inline HttpResponse http_get(std::uint16_t port, const std::string& path) {
  HttpResponse r;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return r;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return r;
  }
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (::send(fd, req.data(), req.size(), 0) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return r;
  }
  std::string all;
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    all.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  auto end = all.find("\r\n\r\n");
  if (end == std::string::npos || all.rfind("HTTP/1.1 ", 0) != 0) return r;
  r.status = std::atoi(all.c_str() + 9);
  r.headers = all.substr(0, end);
  for (char& c : r.headers) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  r.body = all.substr(end + 4);
  return r;
}

struct Exposition {
  // Sample "name{labels}" exactly as written -> value.
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;  // family -> counter, gauge, histogram
  std::string error;                         // the first structural problem; empty when valid

  double value(const std::string& series) const {
    auto it = samples.find(series);
    return it == samples.end() ? std::nan("") : it->second;
  }
  bool has(const std::string& series) const { return samples.count(series) != 0; }
  // Sum over every series of a metric name (any labels).
  double sum(const std::string& name) const {
    double s = 0;
    for (const auto& [k, v] : samples) {
      if (k == name || k.rfind(name + "{", 0) == 0) s += v;
    }
    return s;
  }
};

inline std::string family_of(const std::string& name, const std::map<std::string, std::string>& types) {
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    std::string s(suffix);
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      std::string base = name.substr(0, name.size() - s.size());
      auto it = types.find(base);
      if (it != types.end() && it->second == "histogram") return base;
    }
  }
  return name;
}

inline Exposition parse_exposition(const std::string& text) {
  Exposition e;
  std::istringstream in(text);
  std::string line, current;
  std::set<std::string> finished, helped;
  auto bad = [&](const std::string& why) {
    if (e.error.empty()) e.error = why + ": " + line;
  };
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# HELP ", 0) == 0) {
      std::string name = line.substr(7, line.find(' ', 7) - 7);
      helped.insert(name);
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream t(line.substr(7));
      std::string name, type;
      t >> name >> type;
      if (type != "counter" && type != "gauge" && type != "histogram") bad("unknown type");
      if (e.types.count(name)) bad("family declared twice");
      if (!helped.count(name)) bad("TYPE without HELP");
      if (!current.empty()) finished.insert(current);
      current = name;
      e.types[name] = type;
      continue;
    }
    if (line[0] == '#') continue;
    auto brace = line.find('{');
    auto space = line.rfind(' ');
    if (space == std::string::npos) {
      bad("no value");
      continue;
    }
    std::string series = line.substr(0, space);
    std::string name = series.substr(0, std::min(brace, space));
    std::string family = family_of(name, e.types);
    if (family != current) bad("sample outside its family's block");
    if (finished.count(family)) bad("family split");
    if (family.size() > 6 && e.types[family] == "counter" && family.compare(family.size() - 6, 6, "_total") != 0) {
      bad("counter not ending in _total");
    }
    std::string v = line.substr(space + 1);
    char* end = nullptr;
    double value = v == "+Inf" ? INFINITY : v == "-Inf" ? -INFINITY : std::strtod(v.c_str(), &end);
    if (v != "+Inf" && v != "-Inf" && (end == nullptr || *end != '\0')) bad("value not a number");
    if (e.samples.count(series)) bad("duplicate series");
    e.samples[series] = value;
  }
  // Histograms: cumulative buckets, +Inf equal to _count.
  for (const auto& [family, type] : e.types) {
    if (type != "histogram") continue;
    std::map<std::string, std::pair<double, double>> last;  // series up to le -> (unused, +Inf bucket)
    for (const auto& [series, value] : e.samples) {
      if (series.rfind(family + "_bucket{", 0) != 0) continue;
      auto le = series.find("le=\"");
      std::string rest = series.substr(0, le);
      if (series.find("le=\"+Inf\"") != std::string::npos) last[rest].second = value;
    }
    for (const auto& [rest, v] : last) {
      std::string labels = rest.substr(family.size() + 8);  // after "_bucket{"
      if (!labels.empty() && labels.back() == ',') labels.pop_back();
      std::string count = family + "_count" + (labels.empty() ? "" : "{" + labels + "}");
      if (e.value(count) != v.second) {
        if (e.error.empty()) e.error = "histogram " + count + " differs from its +Inf bucket";
      }
    }
  }
  return e;
}

}  // namespace kvpool::testing
