#pragma once
// Decoding the answers of etcd's v3 JSON gateway (internal to kvpool_etcd).
//
// The gateway writes 64-bit integers as decimal strings and, as proto3 JSON
// does, omits every field whose value is zero or empty: a missing field is
// 0 (or ""). A field that is present but malformed (not an integer, digits
// with junk after them, out of range, bytes that are not base64) is a
// kInternal error naming the field, never read as 0: a revision or lease id
// of 0 means something else to every caller.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "kvpool/status.h"
#include "runtime/etcd/etcd_client.h"

namespace kvpool::etcd::gateway {

Result<std::int64_t> int_field(const nlohmann::json& j, const char* name);
// Member ids use all 64 bits.
Result<std::uint64_t> uint_field(const nlohmann::json& j, const char* name);
// A base64 field (keys and values).
Result<std::string> bytes_field(const nlohmann::json& j, const char* name);

Result<KeyValue> key_value(const nlohmann::json& j);
// A range answer: header.revision and kvs.
Result<RangeResult> range_result(const nlohmann::json& j);
// header.revision of any answer (0 without a header).
Result<std::int64_t> header_revision(const nlohmann::json& j);

}  // namespace kvpool::etcd::gateway
