// kvbench: measures kvpool's data path between two processes on one host.
//
// --mode raw (the default): kvbench starts a region owner (itself, as
// `kvbench serve`) with the UCX transports of each --transports entry,
// connects to it, and moves --total bytes per operation in blocks of
// --block, --batch blocks per batch, spread over the whole region.
// Operations: put, get, owner-read (the owner puts into our registered
// buffer: over TCP, UCX get is 5-60x slower than put), owner-stream (the
// owner sends the bytes as messages we copy out: over TCP one copy fewer
// than UCX's emulated put), put-fenced (put, a
// fence, then a 64-byte put per block: the runtime's ordered write of
// payloads then slot headers), get+hdr, owner-read+hdr and owner-stream+hdr
// (payloads and a 64-byte read per block in one batch: the runtime's reads). With --verify every byte is checked (get and
// owner-read against what the owner or we wrote; puts by the owner itself),
// outside the timed sections. --memcpy adds the single-threaded memcpy
// baseline over a region of the same size: the memory-bandwidth limit for
// shared memory.
//
// --mode e2e: the path a worker takes (bench/kvbench/e2e.h): a standalone
// kvpool-agent lends --region bytes and a libkvpool Client, whose UCX_TLS is
// narrowed to the --transports entry, puts and gets batches of fresh keys
// through it (--e2e-ops e2e-put, e2e-get, e2e-lookup, checksum). At most 90%
// of the pool is written, so nothing is evicted. --mode raw,e2e runs both,
// one transport after the other, so their ratios come from one run.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench/kvbench/e2e.h"
#include "bench/kvbench/owner.h"
#include "bench/kvbench/row.h"
#include "runtime/common/pattern.h"
#include "runtime/common/subprocess.h"
#include "runtime/common/units.h"
#include "transport/rendezvous.h"
#include "transport/transport.h"

using namespace kvpool;
using namespace kvpool::transport;
using kvpool::bench::percentile;
using kvpool::bench::Row;
using json = nlohmann::json;

namespace {

constexpr std::uint64_t kOwnerSeed = 1001;
constexpr std::uint64_t kClientSeed = 2002;
constexpr std::size_t kHeaderBytes = 64;  // pool::kSlotHeaderBytes

struct Options {
  std::uint64_t region = 2ull << 30;
  std::uint64_t block = 1ull << 20;
  std::uint64_t batch = 16;
  std::uint64_t total = 2ull << 30;
  std::vector<std::string> transports = {"shm", "tcp"};
  std::vector<std::string> modes = {"raw"};
  std::vector<std::string> ops = {"put", "get", "owner-read", "owner-stream"};
  std::vector<std::string> e2e_ops = {"e2e-put", "e2e-get"};
  std::string agent_tls = std::string(kDefaultTls);
  bool verify = false;
  bool memcpy_baseline = false;
  bool json = false;
  bool owner_poll = false;
  bool e2e_cold = false;
};

std::string tls_for(const std::string& transport) {
  if (transport == "shm") return "posix,self";
  if (transport == "tcp") return "tcp";
  std::string tls = transport;  // a raw UCX_TLS value, '+' standing for ','
  std::replace(tls.begin(), tls.end(), '+', ',');
  return tls;
}

// Remote slot of the i-th block: a stride coprime with the slot count walks
// the whole region, so no block is cache-hot on the owner side.
std::uint64_t slot_of(std::uint64_t i, std::uint64_t slots) {
  std::uint64_t stride = slots / 2 + 1;
  while (std::gcd(stride, slots) != 1) ++stride;
  return (i * stride) % slots;
}

// One owner process reached over one UCX transport selection.
class Session {
 public:
  static Result<std::unique_ptr<Session>> start(const std::string& self, const Options& o, const std::string& tls);
  ~Session();
  Row run(const std::string& op, const Options& o);
  bool mapped() const { return remote_.mapped().has_value(); }

 private:
  Status batch(const std::string& op, std::span<const RmaOp> ops);
  // An owner-streamed read of `ops`, each piece copied to its op's memory.
  Status stream(std::span<const RmaOp> ops, Deadline deadline) {
    auto read = peer_->start_stream_by_owner(remote_, ops);
    if (!read) return read.error();
    return read->wait(deadline);
  }
  Status check_on_owner(std::uint64_t seed, std::uint64_t off, std::uint64_t len, std::uint64_t& wrong);

  std::unique_ptr<Subprocess> owner_;
  std::string tls_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<Channel> channel_;
  std::unique_ptr<Peer> peer_;
  RemoteRegion remote_;
  std::vector<std::byte> buffer_;
  MemoryRegion local_;
  std::vector<std::uint64_t> slot_seed_;  // which pattern each remote slot holds now
  std::vector<std::byte> headers_;        // put-fenced: the 64-byte "headers", unregistered like the runtime's
  std::vector<RmaOp> header_ops_;
  MemoryRegion headers_region_;  // *+hdr owner reads: the agent puts headers into it
};

Result<std::unique_ptr<Session>> Session::start(const std::string& self, const Options& o, const std::string& tls) {
  auto s = std::make_unique<Session>();
  s->tls_ = tls;
  std::vector<std::string> argv = {self, "serve", "--region", std::to_string(o.region), "--seed",
                                   std::to_string(kOwnerSeed)};
  if (o.owner_poll) argv.push_back("--poll");
  auto owner = Subprocess::spawn(argv, {{"UCX_TLS", tls}});
  if (!owner) return tl::unexpected(owner.error());
  s->owner_ = std::make_unique<Subprocess>(std::move(*owner));
  auto line = s->owner_->wait_for_line("PORT ", Deadline::after(std::chrono::seconds(120)));
  if (!line) return make_error(StatusCode::kUnavailable, "owner did not start: " + line.error().message());
  auto port = static_cast<std::uint16_t>(std::stoi(*line));

  auto t = Transport::create({.tls = tls});
  if (!t) return tl::unexpected(t.error());
  s->transport_ = std::move(*t);
  auto ch = Channel::connect("127.0.0.1", port, Deadline::after(std::chrono::seconds(30)));
  if (!ch) return tl::unexpected(ch.error());
  s->channel_ = std::make_unique<Channel>(std::move(*ch));
  auto blob = s->channel_->receive(Deadline::after(std::chrono::seconds(60)));
  if (!blob) return tl::unexpected(blob.error());
  auto info = decode_region_info(*blob);
  if (!info) return tl::unexpected(info.error());
  auto peer = s->transport_->connect(info->worker_address, ErrorMode::kAuto, info->host_id);
  if (!peer) return tl::unexpected(peer.error());
  s->peer_ = std::move(*peer);
  auto remote = s->peer_->import_region(*info);
  if (!remote) return tl::unexpected(remote.error());
  s->remote_ = std::move(*remote);
  if (Status pf = s->remote_.prefault(); !pf.ok()) return tl::unexpected(pf);
  s->buffer_.resize(o.batch * o.block);
  std::memset(s->buffer_.data(), 0, s->buffer_.size());  // fault in before timing
  auto local = s->transport_->register_memory(s->buffer_.data(), s->buffer_.size());
  if (!local) return tl::unexpected(local.error());
  s->local_ = std::move(*local);
  s->slot_seed_.assign(o.region / o.block, kOwnerSeed);
  s->headers_.resize(o.batch * kHeaderBytes);
  auto hr = s->transport_->register_memory(s->headers_.data(), s->headers_.size());
  if (!hr) return tl::unexpected(hr.error());
  s->headers_region_ = std::move(*hr);
  return s;
}

Session::~Session() {
  remote_ = RemoteRegion();
  peer_.reset();
  local_ = MemoryRegion();
  headers_region_ = MemoryRegion();
  transport_.reset();
  channel_.reset();  // the owner exits when the channel closes
  if (owner_) (void)owner_->wait(Deadline::after(std::chrono::seconds(5)));  // then the destructor kills it
}

Status Session::check_on_owner(std::uint64_t seed, std::uint64_t off, std::uint64_t len, std::uint64_t& wrong) {
  Status s = channel_->send("check " + std::to_string(seed) + " " + std::to_string(off) + " " + std::to_string(len));
  if (!s.ok()) return s;
  auto reply = channel_->receive(Deadline::after(std::chrono::seconds(30)));
  if (!reply) return reply.error();
  if (reply->rfind("OK ", 0) != 0) return Status(StatusCode::kInternal, "owner check: " + *reply);
  wrong += std::stoull(reply->substr(3));
  return Status();
}

Status Session::batch(const std::string& op, std::span<const RmaOp> ops) {
  auto deadline = Deadline::after(std::chrono::seconds(60));
  if (op == "put") return peer_->put(remote_, ops, deadline, {.local = &local_});
  if (op == "put-fenced") {
    // The runtime's write: payloads, a fence, then a 64-byte slot header per
    // block from an unregistered scratch buffer, one completion. The
    // "headers" here are the blocks' own first 64 bytes, rewritten, so the
    // region keeps the pattern --verify checks.
    header_ops_.clear();
    for (std::size_t j = 0; j < ops.size(); ++j) {
      std::memcpy(headers_.data() + j * kHeaderBytes, ops[j].local, kHeaderBytes);
      header_ops_.push_back({headers_.data() + j * kHeaderBytes, ops[j].remote_offset, kHeaderBytes});
    }
    return peer_->put_ordered(remote_, ops, header_ops_, deadline, {.local = &local_});
  }
  if (op == "get") return peer_->get(remote_, ops, deadline, {.local = &local_});
  if (op == "get+hdr" || op == "owner-read+hdr" || op == "owner-stream+hdr") {
    // The runtime's read: payloads and a 64-byte slot header per block in
    // one batch (here each block's own first 64 bytes, into a scratch area).
    header_ops_.assign(ops.begin(), ops.end());
    for (std::size_t j = 0; j < ops.size(); ++j) {
      header_ops_.push_back({headers_.data() + j * kHeaderBytes, ops[j].remote_offset, kHeaderBytes});
    }
    if (op == "get+hdr") return peer_->get(remote_, header_ops_, deadline, {.local = &local_});
    if (op == "owner-stream+hdr") return stream(header_ops_, deadline);
    const MemoryRegion* locals[] = {&local_, &headers_region_};
    return peer_->read_by_owner(remote_, header_ops_, locals, deadline);
  }
  if (op == "owner-read") return peer_->read_by_owner(remote_, ops, local_, deadline);
  if (op == "owner-stream") return stream(ops, deadline);
  std::byte* base = *remote_.mapped();
  for (const RmaOp& r : ops) {
    if (op == "memcpy") std::memcpy(base + r.remote_offset, r.local, r.length);
    else std::memcpy(r.local, base + r.remote_offset, r.length);
  }
  return Status();
}

Row Session::run(const std::string& op, const Options& o) {
  Row row;
  bool baseline = op.starts_with("memcpy");
  row.transport = baseline ? "memcpy" : tls_;
  row.lanes = baseline ? "mapped region" : peer_->rma_transports();
  row.op = op;
  row.block = o.block;
  row.batch = o.batch;
  const std::uint64_t slots = o.region / o.block;
  const std::uint64_t nblocks = std::max<std::uint64_t>(o.batch, o.total / o.block / o.batch * o.batch);
  std::vector<double> lat_us;
  std::vector<RmaOp> ops(o.batch);
  double busy = 0;
  // One untimed batch first: connection setup and first-touch costs are not
  // what a steady pool pays. A memcpy row writes a pattern nobody checks.
  for (std::uint64_t j = 0; j < o.batch; ++j) {
    ops[j] = {buffer_.data() + j * o.block, slot_of(j, slots) * o.block, o.block};
  }
  const bool is_put = op == "put" || op == "put-fenced";
  if (!is_put && op != "memcpy") (void)batch(op, ops);
  for (std::uint64_t first = 0; first < nblocks; first += o.batch) {
    for (std::uint64_t j = 0; j < o.batch; ++j) {
      std::uint64_t slot = slot_of(first + j, slots);
      ops[j] = {buffer_.data() + j * o.block, slot * o.block, o.block};
      if (o.verify && is_put) fill_pattern(ops[j].local, ops[j].remote_offset, o.block, kClientSeed);
      // Poison what a read must overwrite, so stale buffer contents never pass.
      if (o.verify && !is_put) std::memset(ops[j].local, 0xa5, o.block);
    }
    auto t0 = Clock::now();
    Status s = batch(op, ops);
    double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    if (!s.ok()) {
      row.ok = false;
      row.error = s.to_string();
      break;
    }
    busy += us / 1e6;
    lat_us.push_back(us);
    row.blocks += o.batch;
    if (!o.verify || baseline) continue;
    for (const RmaOp& r : ops) {
      std::uint64_t slot = r.remote_offset / o.block;
      if (is_put) {
        slot_seed_[slot] = kClientSeed;
        std::uint64_t wrong = 0;
        if (Status c = check_on_owner(kClientSeed, r.remote_offset, o.block, wrong); !c.ok()) {
          row.ok = false;
          row.error = c.to_string();
        }
        row.wrong += wrong;
      } else {
        row.wrong += pattern_mismatches(r.local, r.remote_offset, o.block, slot_seed_[slot]);
      }
      row.verified += o.block;
    }
  }
  row.seconds = busy;
  row.p50_us = percentile(lat_us, 0.50);
  row.p99_us = percentile(lat_us, 0.99);
  return row;
}

void print_table(const std::vector<Row>& rows, bool verify) {
  std::printf("%-4s %-15s %-22s %-14s %9s %6s %8s %9s %10s %10s", "mode", "transport", "ucx lanes", "op", "block",
              "batch", "blocks", "GB/s", "p50 us", "p99 us");
  if (verify) std::printf(" %14s %11s", "verified", "wrong bytes");
  std::printf("\n");
  for (const Row& r : rows) {
    std::printf("%-4s %-15s %-22s %-14s %9s %6llu %8llu %9.2f %10.1f %10.1f", r.mode.c_str(), r.transport.c_str(),
                r.lanes.c_str(), r.op.c_str(), format_size(r.block).c_str(), static_cast<unsigned long long>(r.batch),
                static_cast<unsigned long long>(r.blocks), r.gbps(), r.p50_us, r.p99_us);
    if (verify) {
      std::printf(" %14s %11llu", format_size(r.verified).c_str(), static_cast<unsigned long long>(r.wrong));
    }
    if (!r.ok) std::printf("  FAILED: %s", r.error.c_str());
    std::printf("\n");
  }
}

json to_json(const Row& r) {
  return json{{"mode", r.mode},
              {"transport", r.transport},
              {"lanes", r.lanes},
              {"op", r.op},
              {"block_bytes", r.block},
              {"batch", r.batch},
              {"blocks", r.blocks},
              {"bytes", r.blocks * r.block},
              {"seconds", r.seconds},
              {"gbps", r.gbps()},
              {"p50_us", r.p50_us},
              {"p99_us", r.p99_us},
              {"verified_bytes", r.verified},
              {"wrong_bytes", r.wrong},
              {"ok", r.ok},
              {"error", r.error}};
}

bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvbench: kvpool data-path benchmark between two processes on this host"};
  Options o;
  std::string region = "2GiB", block = "1MiB", total = "2GiB";
  app.add_option("--mode", o.modes,
                 "raw (transport only, to a region owner), e2e (libkvpool Client through a standalone agent), "
                 "or raw,e2e (both, per transport)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--region", region,
                 "Size of the owner's region (raw: blocks are spread over all of it); e2e: the agent's pool, of "
                 "which at most 90% is written")
      ->capture_default_str();
  app.add_option("--block", block, "Block size, e.g. 64KiB, 1MiB, 2MiB")->capture_default_str();
  app.add_option("--batch", o.batch, "Blocks per batch (one completion per batch)")->capture_default_str();
  app.add_option("--total", total, "Bytes moved per operation")->capture_default_str();
  app.add_option("--transports", o.transports,
                 "shm (UCX_TLS=posix,self), tcp (UCX_TLS=tcp), or a raw UCX_TLS value with '+' for ',' "
                 "(posix+cma+self); one owner process each")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--ops", o.ops,
                 "raw ops: put, get, owner-read, owner-stream; the runtime's transfers without its control round "
                 "trips and checksums: put-fenced (payloads, a fence, then a 64-byte put per block), get+hdr, "
                 "owner-read+hdr and owner-stream+hdr (payloads and a 64-byte read per block in one batch)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--e2e-ops", o.e2e_ops,
                 "e2e ops: e2e-put, e2e-get, e2e-lookup (coordinator round trip only), checksum (XXH3 in "
                 "process); information-only ops run after the puts")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--agent-tls", o.agent_tls,
                 "e2e: the agent's --tls (it serves every transport; only the client side is narrowed to "
                 "--transports: shm = posix,cma,self, tcp = tcp)")
      ->capture_default_str();
  app.add_flag("--e2e-cold", o.e2e_cold,
               "e2e over shared memory: measure puts into pages of the agent's region this process has not "
               "touched yet (by default as many blocks as measured are written and removed first, untimed: the "
               "steady state)");
  app.add_flag("--verify", o.verify,
               "Check every byte moved (outside the timed sections); e2e: blocks hold a pattern derived from "
               "their key, checked after get");
  app.add_flag("--memcpy", o.memcpy_baseline,
               "Add single-threaded memcpy rows to and from the mapped region (shared memory sessions): the "
               "memory-bandwidth limit, spread the same way");
  app.add_flag("--owner-poll", o.owner_poll, "Owner progress thread polls instead of sleeping on events");
  app.add_flag("--json", o.json, "Print rows as JSON");

  auto* serve = app.add_subcommand("serve", "Run as the region owner (kvbench starts this itself)");
  bench::OwnerOptions owner;
  std::string serve_region = "2GiB";
  serve->add_option("--region", serve_region, "Region size")->capture_default_str();
  serve->add_option("--seed", owner.seed, "Pattern seed for the region's initial contents");
  serve->add_flag("--poll", owner.poll_progress, "Poll instead of waiting on the worker's event fd");
  CLI11_PARSE(app, argc, argv);

  if (serve->parsed()) {
    auto bytes = parse_size(serve_region);
    if (!bytes) {
      std::fprintf(stderr, "kvbench serve: %s\n", bytes.error().to_string().c_str());
      return 2;
    }
    owner.region_bytes = *bytes;
    return bench::run_owner(owner);
  }

  auto r = parse_size(region), b = parse_size(block), t = parse_size(total);
  for (const auto* v : {&r, &b, &t}) {
    if (!*v) {
      std::fprintf(stderr, "kvbench: %s\n", v->error().to_string().c_str());
      return 2;
    }
  }
  o.region = *r;
  o.block = *b;
  o.total = *t;
  if (o.block % 8 != 0 || o.block == 0 || o.batch == 0 || o.region < o.block * o.batch) {
    std::fprintf(stderr, "kvbench: need block a multiple of 8 and region >= block x batch\n");
    return 2;
  }
  for (const auto& m : o.modes) {
    if (m != "raw" && m != "e2e") {
      std::fprintf(stderr, "kvbench: unknown mode '%s' (raw, e2e)\n", m.c_str());
      return 2;
    }
  }
  for (const auto& op : o.ops) {
    if (op != "put" && op != "put-fenced" && op != "get" && op != "owner-read" && op != "get+hdr" &&
        op != "owner-read+hdr" && op != "owner-stream" && op != "owner-stream+hdr") {
      std::fprintf(stderr,
                   "kvbench: unknown op '%s' (put, get, owner-read, owner-stream, put-fenced, get+hdr, "
                   "owner-read+hdr, owner-stream+hdr)\n",
                   op.c_str());
      return 2;
    }
  }
  for (const auto& op : o.e2e_ops) {
    if (op != "e2e-put" && op != "e2e-get" && op != "e2e-lookup" && op != "checksum") {
      std::fprintf(stderr, "kvbench: unknown e2e op '%s' (e2e-put, e2e-get, e2e-lookup, checksum)\n", op.c_str());
      return 2;
    }
  }
  const std::string self = bin_dir() + "/kvbench";

  std::vector<Row> rows;
  bool failed = false;
  for (const auto& tr : o.transports) {
    if (contains(o.modes, "raw")) {
      auto session = Session::start(self, o, tls_for(tr));
      if (!session) {
        std::fprintf(stderr, "kvbench: transport %s: %s\n", tr.c_str(), session.error().to_string().c_str());
        Row row;
        row.transport = tls_for(tr);
        row.op = o.ops.empty() ? "put" : o.ops.front();
        row.block = o.block;
        row.batch = o.batch;
        row.ok = false;
        row.error = "start: " + session.error().to_string();
        rows.push_back(row);
      } else {
        // The memory-bandwidth limit for shared memory: memcpy between the
        // same buffer and the same mapped region, spread the same way.
        if (o.memcpy_baseline && (*session)->mapped()) {
          for (const char* op : {"memcpy", "memcpy-read"}) rows.push_back((*session)->run(op, o));
        }
        for (const auto& op : o.ops) rows.push_back((*session)->run(op, o));
      }
    }
    if (contains(o.modes, "e2e")) {
      bench::E2eOptions eo;
      eo.pool = o.region;
      eo.block = o.block;
      eo.batch = o.batch;
      eo.total = o.total;
      eo.verify = o.verify;
      eo.ops = o.e2e_ops;
      eo.agent_tls = o.agent_tls;
      eo.cold = o.e2e_cold;
      for (Row& row : bench::run_e2e(tr, eo)) {
        if (!row.ok) std::fprintf(stderr, "kvbench: e2e %s %s: %s\n", tr.c_str(), row.op.c_str(), row.error.c_str());
        rows.push_back(std::move(row));
      }
    }
  }
  for (const Row& row : rows) failed |= !row.ok || row.wrong != 0;
  if (o.json) {
    json out = json::array();
    for (const Row& row : rows) out.push_back(to_json(row));
    std::cout << out.dump(2) << std::endl;
  } else {
    print_table(rows, o.verify);
  }
  return failed ? 1 : 0;
}
