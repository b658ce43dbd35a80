#include "runtime/etcd/gateway_json.h"

#include <charconv>
#include <type_traits>

namespace kvpool::etcd::gateway {
namespace {

using json = nlohmann::json;

template <typename Int>
Result<Int> integer_field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return Int{0};
  auto bad = [&] {
    return make_error(StatusCode::kInternal,
                      std::string("etcd answer: field '") + name + "' is not a " +
                          (std::is_signed_v<Int> ? "64-bit integer" : "64-bit unsigned integer") + ": " +
                          it->dump().substr(0, 64));
  };
  if (it->is_number_unsigned()) {
    const auto v = it->get<std::uint64_t>();
    if (std::is_signed_v<Int> && v > static_cast<std::uint64_t>(INT64_MAX)) return bad();
    return static_cast<Int>(v);
  }
  if (it->is_number_integer()) {
    const auto v = it->get<std::int64_t>();
    if (!std::is_signed_v<Int> && v < 0) return bad();
    return static_cast<Int>(v);
  }
  if (!it->is_string()) return bad();
  const std::string& text = it->get_ref<const std::string&>();
  Int v{};
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || ptr != end) return bad();
  return v;
}

}  // namespace

Result<std::int64_t> int_field(const json& j, const char* name) { return integer_field<std::int64_t>(j, name); }

Result<std::uint64_t> uint_field(const json& j, const char* name) { return integer_field<std::uint64_t>(j, name); }

Result<std::string> bytes_field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return std::string();
  if (!it->is_string()) {
    return make_error(StatusCode::kInternal, std::string("etcd answer: field '") + name + "' is not a string");
  }
  auto d = base64_decode(it->get<std::string>());
  if (!d) return make_error(StatusCode::kInternal, std::string("etcd answer: field '") + name + "' is not base64");
  return *d;
}

Result<KeyValue> key_value(const json& j) {
  if (!j.is_object()) return make_error(StatusCode::kInternal, "etcd answer: a key-value is not an object");
  KeyValue kv;
  for (auto [field, out] : {std::pair{"key", &kv.key}, std::pair{"value", &kv.value}}) {
    auto b = bytes_field(j, field);
    if (!b) return tl::unexpected(b.error());
    *out = std::move(*b);
  }
  for (auto [field, out] :
       {std::pair{"create_revision", &kv.create_revision}, std::pair{"mod_revision", &kv.mod_revision},
        std::pair{"version", &kv.version}, std::pair{"lease", &kv.lease}}) {
    auto v = int_field(j, field);
    if (!v) return tl::unexpected(v.error());
    *out = *v;
  }
  return kv;
}

Result<std::int64_t> header_revision(const json& j) {
  auto h = j.find("header");
  if (h == j.end()) return std::int64_t{0};
  if (!h->is_object()) return make_error(StatusCode::kInternal, "etcd answer: 'header' is not an object");
  return int_field(*h, "revision");
}

Result<RangeResult> range_result(const json& j) {
  RangeResult r;
  auto rev = header_revision(j);
  if (!rev) return tl::unexpected(rev.error());
  r.revision = *rev;
  if (auto kvs = j.find("kvs"); kvs != j.end()) {
    if (!kvs->is_array()) return make_error(StatusCode::kInternal, "etcd answer: 'kvs' is not an array");
    for (const auto& one : *kvs) {
      auto kv = key_value(one);
      if (!kv) return tl::unexpected(kv.error());
      r.kvs.push_back(std::move(*kv));
    }
  }
  return r;
}

}  // namespace kvpool::etcd::gateway
