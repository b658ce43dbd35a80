// kvpool._kvpool: the Python binding of kvpool::Client (include/kvpool/client.h).
// The public names are re-exported by python/kvpool/__init__.py, which
// documents the API.
//
// Rules this file keeps:
// - Every call that waits (RPC, data movement, waiting on a future) releases
//   the GIL; Python objects are touched only with the GIL held.
// - Buffers are taken through the buffer protocol and held (Py_buffer) for as
//   long as the runtime may touch them: for the call, for an async
//   operation's life, or while registered. A held export keeps the memory
//   alive: a registered bytearray cannot be resized or freed, so a buffer
//   dropped while registered is never a dangling pointer.
// - Runtime failures become kvpool.errors exceptions with the status code's
//   name and message (StatusError is translated at the module boundary).

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvpool/client.h"
#include "kvpool/status.h"
#include "kvpool/types.h"
#include "runtime/common/logging.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace py = pybind11;

namespace kvpool::python {
namespace {

// A runtime Status on its way to Python; translated to kvpool.errors.*.
class StatusError : public std::exception {
 public:
  explicit StatusError(Status status) : status_(std::move(status)) {}
  StatusError(StatusCode code, std::string message) : status_(code, std::move(message)) {}
  const Status& status() const { return status_; }
  const char* what() const noexcept override { return status_.message().c_str(); }

 private:
  Status status_;
};

// The kvpool.errors exception object for a Status (GIL held).
py::object to_exception(const Status& s) {
  return py::module_::import("kvpool.errors").attr("from_status")(std::string(code_name(s.code())), s.message());
}

template <typename T>
T value_or_raise(Result<T> r) {
  if (!r) throw StatusError(r.error());
  return std::move(*r);
}

void raise_if_error(const Status& s) {
  if (!s.ok()) throw StatusError(s);
}

[[noreturn]] void invalid(std::string message) { throw StatusError(StatusCode::kInvalidArgument, std::move(message)); }

// One held buffer-protocol export. Move-only; released with the GIL held
// (every owner is destroyed under the GIL).
class HeldBuffer {
 public:
  // Takes a C- or Fortran-contiguous export of `obj`; kInvalidArgument
  // naming `what` when obj offers none (or no writable one).
  static HeldBuffer take(py::handle obj, bool writable, const std::string& what) {
    HeldBuffer b;
    int flags = PyBUF_ANY_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), &b.view_, flags) != 0) {
      std::string reason = "error";
      if (PyErr_Occurred() != nullptr) {
        py::error_already_set e;
        reason = e.what();
      }
      invalid(what + ": a " + std::string(Py_TYPE(obj.ptr())->tp_name) + " is not a contiguous" +
              (writable ? " writable" : "") + " buffer (" + reason + ")");
    }
    b.held_ = true;
    return b;
  }
  HeldBuffer() = default;
  HeldBuffer(HeldBuffer&& o) noexcept : view_(o.view_), held_(std::exchange(o.held_, false)) {}
  HeldBuffer& operator=(HeldBuffer&& o) noexcept {
    if (this != &o) {
      release();
      view_ = o.view_;
      held_ = std::exchange(o.held_, false);
    }
    return *this;
  }
  HeldBuffer(const HeldBuffer&) = delete;
  HeldBuffer& operator=(const HeldBuffer&) = delete;
  ~HeldBuffer() { release(); }

  std::byte* data() const { return static_cast<std::byte*>(view_.buf); }
  std::size_t size() const { return static_cast<std::size_t>(view_.len); }

 private:
  void release() {
    if (held_) PyBuffer_Release(&view_);
    held_ = false;
  }
  Py_buffer view_{};
  bool held_ = false;
};

// ------------------------------------------------------------------ keys --

// Keys in Python are 16-byte bytes: lo little-endian then hi little-endian,
// i.e. the 128-bit key as a little-endian integer. Ints in [0, 2**128) are
// accepted too.
py::bytes key_to_bytes(const Key128& k) {
  unsigned char b[16];
  for (int i = 0; i < 8; ++i) {
    b[i] = static_cast<unsigned char>(k.lo >> (8 * i));
    b[8 + i] = static_cast<unsigned char>(k.hi >> (8 * i));
  }
  return py::bytes(reinterpret_cast<const char*>(b), sizeof(b));
}

Key128 key_from_bytes(const unsigned char* b) {
  Key128 k;
  for (int i = 0; i < 8; ++i) {
    k.lo |= static_cast<std::uint64_t>(b[i]) << (8 * i);
    k.hi |= static_cast<std::uint64_t>(b[8 + i]) << (8 * i);
  }
  return k;
}

bool is_bytes_like(py::handle h) {
  return PyBytes_Check(h.ptr()) || PyByteArray_Check(h.ptr()) || PyMemoryView_Check(h.ptr());
}

// An int-like (int, numpy integer scalar); not an array, which numpy also
// lets act as an index.
bool is_int_like(py::handle h) { return PyIndex_Check(h.ptr()) && !PySequence_Check(h.ptr()); }

bool is_single_key(py::handle h) { return is_bytes_like(h) || is_int_like(h); }

Key128 to_key(py::handle h, std::size_t index) {
  if (is_bytes_like(h)) {
    HeldBuffer b = HeldBuffer::take(h, false, "key " + std::to_string(index));
    if (b.size() != 16) invalid("key " + std::to_string(index) + ": " + std::to_string(b.size()) + " bytes, not 16");
    return key_from_bytes(reinterpret_cast<const unsigned char*>(b.data()));
  }
  if (is_int_like(h)) {
    py::int_ v = py::reinterpret_steal<py::int_>(PyNumber_Index(h.ptr()));
    if (!v) throw py::error_already_set();
    py::bytes b;
    try {
      // Unsigned little-endian in exactly 16 bytes: OverflowError for < 0 or >= 2**128.
      b = v.attr("to_bytes")(16, "little");
    } catch (py::error_already_set&) {
      invalid("key " + std::to_string(index) + ": an int outside [0, 2**128)");
    }
    return key_from_bytes(reinterpret_cast<const unsigned char*>(PyBytes_AS_STRING(b.ptr())));
  }
  throw py::type_error("key " + std::to_string(index) + ": expected 16 bytes or an int, got " +
                       std::string(Py_TYPE(h.ptr())->tp_name));
}

// A key argument: one key (bytes-like or int) or a sequence of keys.
struct Keys {
  std::vector<Key128> keys;
  bool single = false;
};

Keys to_keys(py::handle h) {
  Keys k;
  if (is_single_key(h)) {
    k.single = true;
    k.keys.push_back(to_key(h, 0));
    return k;
  }
  if (!PySequence_Check(h.ptr())) {
    throw py::type_error("keys: expected a key (16 bytes or an int) or a sequence of keys, got " +
                         std::string(Py_TYPE(h.ptr())->tp_name));
  }
  py::sequence seq = py::reinterpret_borrow<py::sequence>(h);
  k.keys.reserve(seq.size());
  std::size_t i = 0;
  for (py::handle item : seq) k.keys.push_back(to_key(item, i++));
  return k;
}

// Tokens for prefix_keys: a uint32 buffer (numpy.uint32 array, array('I'))
// taken as is, or any sequence of ints in [0, 2**32).
std::vector<std::uint32_t> to_tokens(py::handle h) {
  std::vector<std::uint32_t> out;
  if (PyObject_CheckBuffer(h.ptr()) && !is_bytes_like(h)) {
    Py_buffer view;
    if (PyObject_GetBuffer(h.ptr(), &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0) {
      std::string format = view.format != nullptr ? view.format : "B";
      if (!format.empty() && (format[0] == '<' || format[0] == '=' || format[0] == '@')) format.erase(0, 1);
      const bool u32 = view.itemsize == 4 && (format == "I" || (format == "L" && sizeof(long) == 4));
      if (u32) {
        out.resize(static_cast<std::size_t>(view.len) / 4);
        std::memcpy(out.data(), view.buf, out.size() * 4);
      }
      PyBuffer_Release(&view);
      if (u32) return out;
    } else {
      PyErr_Clear();
    }
  }
  if (!PySequence_Check(h.ptr())) throw py::type_error("tokens: expected a sequence of ints");
  py::sequence seq = py::reinterpret_borrow<py::sequence>(h);
  out.reserve(seq.size());
  for (py::handle item : seq) {
    py::int_ v = py::reinterpret_steal<py::int_>(PyNumber_Index(item.ptr()));
    if (!v) throw py::error_already_set();
    unsigned long long x = PyLong_AsUnsignedLongLong(v.ptr());
    if (PyErr_Occurred() != nullptr || x > 0xffffffffull) {
      PyErr_Clear();
      invalid("tokens: a token outside [0, 2**32)");
    }
    out.push_back(static_cast<std::uint32_t>(x));
  }
  return out;
}


// ----------------------------------------------------------- engine keys --

// An engine's own block key (bytes, str or int) as a kvpool key: XXH3-128
// seeded with the namespace id over one type byte ('b' bytes, 's' UTF-8
// str, 'i' the int in signed decimal ASCII) and the key's bytes. The type
// byte keeps b"12", "12" and 12 apart; the seed keeps namespaces apart.
Key128 engine_key_of(NamespaceId ns, py::handle h, std::size_t index) {
  std::string buf;
  if (is_bytes_like(h)) {
    HeldBuffer b = HeldBuffer::take(h, false, "engine key " + std::to_string(index));
    buf.reserve(1 + b.size());
    buf.push_back('b');
    buf.append(reinterpret_cast<const char*>(b.data()), b.size());
  } else if (PyUnicode_Check(h.ptr())) {
    Py_ssize_t n = 0;
    const char* s = PyUnicode_AsUTF8AndSize(h.ptr(), &n);
    if (s == nullptr) throw py::error_already_set();
    buf.reserve(1 + static_cast<std::size_t>(n));
    buf.push_back('s');
    buf.append(s, static_cast<std::size_t>(n));
  } else if (is_int_like(h)) {
    py::int_ v = py::reinterpret_steal<py::int_>(PyNumber_Index(h.ptr()));
    if (!v) throw py::error_already_set();
    buf.push_back('i');
    buf += py::str(v).cast<std::string>();
  } else {
    throw py::type_error("engine key " + std::to_string(index) + ": expected bytes, str or int, got " +
                         std::string(Py_TYPE(h.ptr())->tp_name));
  }
  XXH128_hash_t x = XXH3_128bits_withSeed(buf.data(), buf.size(), ns);
  return Key128{x.low64, x.high64};
}

// ------------------------------------------------------------- buffers --

// The blocks (put) or destinations (get) of a batch: a sequence of buffers,
// one per key, or one buffer exposing the buffer protocol holding the n
// blocks back to back (e.g. a numpy array of shape (n, block_bytes)).
struct Batch {
  std::vector<HeldBuffer> held;
  std::vector<std::span<const std::byte>> blocks;  // put
  std::vector<std::span<std::byte>> buffers;       // get
};

Batch to_batch(py::handle obj, std::size_t n, std::uint64_t block, bool for_get) {
  Batch b;
  const char* what = for_get ? "buffers" : "blocks";
  auto add = [&](std::byte* p, std::size_t size) {
    if (for_get) {
      b.buffers.emplace_back(p, size);
    } else {
      b.blocks.emplace_back(p, size);
    }
  };
  if (PyObject_CheckBuffer(obj.ptr())) {
    HeldBuffer one = HeldBuffer::take(obj, for_get, what);
    if (one.size() != n * block) {
      invalid(std::string(what) + ": one buffer of " + std::to_string(one.size()) + " bytes for " +
              std::to_string(n) + " blocks of " + std::to_string(block) + " bytes");
    }
    for (std::size_t i = 0; i < n; ++i) add(one.data() + i * block, block);
    b.held.push_back(std::move(one));
    return b;
  }
  if (!PySequence_Check(obj.ptr())) {
    throw py::type_error(std::string(what) + ": expected a buffer or a sequence of buffers");
  }
  py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  if (seq.size() != n) {
    invalid(std::string(what) + ": " + std::to_string(seq.size()) + " buffers for " + std::to_string(n) + " keys");
  }
  b.held.reserve(n);
  std::size_t i = 0;
  for (py::handle item : seq) {
    HeldBuffer h = HeldBuffer::take(item, for_get, std::string(what) + "[" + std::to_string(i) + "]");
    const bool ok = for_get ? h.size() >= block : h.size() == block;
    if (!ok) {
      invalid(std::string(what) + "[" + std::to_string(i) + "]: " + std::to_string(h.size()) + " bytes; the block size is " +
              std::to_string(block) + (for_get ? " (at least that is needed)" : ""));
    }
    add(h.data(), h.size());
    b.held.push_back(std::move(h));
    ++i;
  }
  return b;
}

// --------------------------------------------------------------- results --

const char* outcome_name(PutOutcome o) {
  switch (o) {
    case PutOutcome::kWritten: return "written";
    case PutOutcome::kExists: return "exists";
    case PutOutcome::kPending: return "pending";
    case PutOutcome::kFailed: return "failed";
  }
  return "failed";
}

// kvpool.PutResult: what a put did, per key and in total.
struct PyPutResult {
  std::size_t written = 0;
  std::size_t deduplicated = 0;
  std::size_t pending = 0;
  std::size_t failed = 0;
  py::list outcomes;  // "written" | "exists" | "pending" | "failed"
  py::list errors;    // kvpool.Error or None, per key
};

PyPutResult to_py(const PutResult& r) {
  PyPutResult p;
  p.written = r.written;
  p.deduplicated = r.deduplicated;
  p.pending = r.pending;
  p.failed = r.failed;
  for (std::size_t i = 0; i < r.outcomes.size(); ++i) {
    p.outcomes.append(py::str(outcome_name(r.outcomes[i])));
    p.errors.append(i < r.errors.size() && !r.errors[i].ok() ? to_exception(r.errors[i]) : py::none());
  }
  return p;
}

py::object bools(const std::vector<bool>& v, bool single) {
  if (single) return py::bool_(!v.empty() && v[0]);
  py::list out;
  for (bool b : v) out.append(py::bool_(b));
  return out;
}

// --------------------------------------------------------------- futures --

// kvpool.Future: an async put or get. Owns the keys and holds the buffers
// until the operation completes, and the client it runs on (shared with the
// Python Client: a closed client's destructor waits for the operation).
class PyFuture {
 public:
  PyFuture(std::shared_ptr<Client> client, std::vector<Key128> keys, Batch batch)
      : client_(std::move(client)), keys_(std::move(keys)), batch_(std::move(batch)) {}
  PyFuture(const PyFuture&) = delete;
  PyFuture& operator=(const PyFuture&) = delete;

  ~PyFuture() {
    // The I/O threads may still use the keys and buffers: wait, without the
    // GIL. Dropping the client may wait for its other operations too.
    py::gil_scoped_release release;
    if (put_.valid()) put_.wait();
    if (get_.valid()) get_.wait();
    client_.reset();
  }

  void start_put(NamespaceId ns) { put_ = client_->put_async(ns, keys_, batch_.blocks); }
  void start_get(NamespaceId ns) { get_ = client_->get_async(ns, keys_, batch_.buffers); }

  bool done() {
    if (put_result_ || get_result_) return true;
    if (put_.valid()) return put_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
    return get_.valid() && get_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  }

  // The result (PutResult for a put, blocks loaded for a get); raises the
  // operation's error; TimeoutError when it is still running after timeout_s.
  py::object wait(std::optional<double> timeout_s) {
    if (!put_result_ && !get_result_) {
      bool ready = true;
      {
        py::gil_scoped_release release;
        auto settle = [&](auto& fut) {
          if (!timeout_s) {
            fut.wait();
            return true;
          }
          auto d = std::chrono::duration<double>(std::max(0.0, *timeout_s));
          return fut.wait_for(d) == std::future_status::ready;
        };
        ready = put_.valid() ? settle(put_) : settle(get_);
      }
      if (!ready) {
        PyErr_SetString(PyExc_TimeoutError, "kvpool operation still in progress");
        throw py::error_already_set();
      }
      if (put_.valid()) {
        put_result_ = put_.get();
      } else {
        get_result_ = get_.get();
      }
      // Complete: the buffers may go.
      batch_.held.clear();
    }
    if (put_result_) return py::cast(to_py(value_or_raise(*put_result_)));
    return py::int_(value_or_raise(*get_result_).loaded);
  }

 private:
  // Destruction: the futures (waited in ~PyFuture), then the buffers.
  std::shared_ptr<Client> client_;
  std::vector<Key128> keys_;
  Batch batch_;
  std::future<Result<PutResult>> put_;
  std::future<Result<GetResult>> get_;
  std::optional<Result<PutResult>> put_result_;
  std::optional<Result<GetResult>> get_result_;
};

// ---------------------------------------------------------------- client --

NamespaceDescriptor make_descriptor(std::string model_id, std::string dtype, std::uint32_t num_layers,
                                    std::uint32_t num_kv_heads, std::uint32_t head_dim,
                                    std::uint32_t tokens_per_block, std::string layout, std::uint32_t tp_rank,
                                    std::uint32_t tp_size, std::uint64_t block_bytes) {
  NamespaceDescriptor d;
  d.model_id = std::move(model_id);
  d.dtype = std::move(dtype);
  d.num_layers = num_layers;
  d.num_kv_heads = num_kv_heads;
  d.head_dim = head_dim;
  d.tokens_per_block = tokens_per_block;
  d.layout = std::move(layout);
  d.tp_rank = tp_rank;
  d.tp_size = tp_size;
  d.block_bytes = block_bytes;
  return d;
}

class PyClient {
 public:
  PyClient(const std::string& coordinator, py::object secret_file, double timeout_s, const std::string& client_id,
           const std::string& tls) {
    if (!secret_file.is_none()) {
      // A str or os.PathLike; kept for the secret_file attribute.
      secret_file_ = py::module_::import("os").attr("fspath")(secret_file).cast<std::string>();
    }
    if (!(timeout_s > 0)) invalid("timeout_s must be positive");
    ClientOptions o;
    o.secret_file = secret_file_;
    o.coordinator = coordinator;
    o.client_id = client_id;
    o.tls = tls;
    o.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
    Result<std::unique_ptr<Client>> c;
    {
      py::gil_scoped_release release;
      c = Client::connect(o);
    }
    client_ = std::shared_ptr<Client>(value_or_raise(std::move(c)).release());
    coordinator_ = coordinator;
  }
  PyClient(const PyClient&) = delete;
  PyClient& operator=(const PyClient&) = delete;
  ~PyClient() { close(); }

  // Unregisters every buffer and drops the client; its destructor waits for
  // operations in flight (futures keep it alive until theirs complete).
  void close() {
    if (!client_) return;
    std::shared_ptr<Client> c = std::move(client_);
    for (const auto& [addr, held] : registered_) (void)c->unregister_buffer(reinterpret_cast<void*>(addr));
    for (auto addr : raw_registered_) (void)c->unregister_buffer(reinterpret_cast<void*>(addr));
    registered_.clear();  // releases the exports (GIL held)
    raw_registered_.clear();
    py::gil_scoped_release release;
    c.reset();
  }

  bool closed() const { return !client_; }
  const std::string& coordinator() const { return coordinator_; }
  py::object secret_file() const { return secret_file_.empty() ? py::object(py::none()) : py::str(secret_file_); }

  std::uint64_t register_namespace(const NamespaceDescriptor& d) {
    auto c = live();
    Result<NamespaceId> id;
    {
      py::gil_scoped_release release;
      id = c->register_namespace(d);
    }
    return value_or_raise(std::move(id));
  }

  std::uint64_t block_bytes(NamespaceId ns) const { return value_or_raise(live()->block_bytes(ns)); }

  void register_buffer(py::handle obj) {
    // A (pointer, length) pair of ints: raw host memory the caller keeps alive.
    if (PyTuple_Check(obj.ptr()) && PyTuple_GET_SIZE(obj.ptr()) == 2) {
      py::tuple pair = py::reinterpret_borrow<py::tuple>(obj);
      if (is_int_like(pair[0]) && is_int_like(pair[1])) {
        return register_buffer_ptr(pair[0].cast<std::uintptr_t>(), pair[1].cast<std::size_t>());
      }
    }
    auto c = live();
    HeldBuffer h = HeldBuffer::take(obj, true, "register_buffer");
    if (h.size() == 0) invalid("register_buffer: an empty buffer");
    Status s;
    {
      py::gil_scoped_release release;
      s = c->register_buffer(h.data(), h.size());
    }
    raise_if_error(s);
    registered_[reinterpret_cast<std::uintptr_t>(h.data())] = std::move(h);
  }

  void register_buffer_ptr(std::uintptr_t ptr, std::size_t length) {
    auto c = live();
    if (ptr == 0 || length == 0) invalid("register_buffer_ptr: a null pointer or an empty range");
    Status s;
    {
      py::gil_scoped_release release;
      s = c->register_buffer(reinterpret_cast<void*>(ptr), length);
    }
    raise_if_error(s);
    raw_registered_.push_back(ptr);
  }

  // By the object registered, or by the address (an int) of either form.
  void unregister_buffer(py::handle obj) {
    auto c = live();
    std::uintptr_t addr = 0;
    if (is_int_like(obj)) {
      addr = obj.cast<std::uintptr_t>();
    } else {
      addr = reinterpret_cast<std::uintptr_t>(HeldBuffer::take(obj, false, "unregister_buffer").data());
    }
    raise_if_error(c->unregister_buffer(reinterpret_cast<void*>(addr)));
    registered_.erase(addr);
    std::erase(raw_registered_, addr);
  }

  PyPutResult put(NamespaceId ns, py::handle keys, py::handle blocks) {
    auto c = live();
    Keys k = to_keys(keys);
    Batch b = to_batch(blocks, k.keys.size(), value_or_raise(c->block_bytes(ns)), false);
    Result<PutResult> r;
    {
      py::gil_scoped_release release;
      r = c->put(ns, k.keys, b.blocks);
    }
    return to_py(value_or_raise(std::move(r)));
  }

  std::size_t get(NamespaceId ns, py::handle keys, py::handle buffers) {
    auto c = live();
    Keys k = to_keys(keys);
    Batch b = to_batch(buffers, k.keys.size(), value_or_raise(c->block_bytes(ns)), true);
    Result<GetResult> r;
    {
      py::gil_scoped_release release;
      r = c->get(ns, k.keys, b.buffers);
    }
    return value_or_raise(std::move(r)).loaded;
  }

  std::size_t lookup(NamespaceId ns, py::handle keys) {
    auto c = live();
    Keys k = to_keys(keys);
    Result<std::size_t> r;
    {
      py::gil_scoped_release release;
      r = c->lookup(ns, k.keys);
    }
    return value_or_raise(std::move(r));
  }

  py::object remove(NamespaceId ns, py::handle keys) {
    auto c = live();
    Keys k = to_keys(keys);
    Result<std::vector<Status>> r;
    {
      py::gil_scoped_release release;
      r = c->remove(ns, k.keys);
    }
    auto statuses = value_or_raise(std::move(r));
    std::vector<bool> removed;
    for (const auto& s : statuses) {
      if (!s.ok() && s.code() != StatusCode::kNotFound) throw StatusError(s);
      removed.push_back(s.ok());
    }
    return bools(removed, k.single);
  }

  py::object wait_for(NamespaceId ns, py::handle keys, double timeout_s) {
    auto c = live();
    Keys k = to_keys(keys);
    if (!(timeout_s >= 0)) invalid("timeout_s must not be negative");
    // The protocol carries the timeout in 32-bit milliseconds.
    auto ms = std::chrono::milliseconds(static_cast<std::int64_t>(std::min(timeout_s, 4.0e6) * 1000));
    Result<std::vector<bool>> r;
    {
      py::gil_scoped_release release;
      r = c->wait_for(ns, k.keys, ms);
    }
    return bools(value_or_raise(std::move(r)), k.single);
  }

  std::unique_ptr<PyFuture> put_async(NamespaceId ns, py::handle keys, py::handle blocks) {
    auto c = live();
    Keys k = to_keys(keys);
    Batch b = to_batch(blocks, k.keys.size(), value_or_raise(c->block_bytes(ns)), false);
    auto f = std::make_unique<PyFuture>(c, std::move(k.keys), std::move(b));
    f->start_put(ns);
    return f;
  }

  std::unique_ptr<PyFuture> get_async(NamespaceId ns, py::handle keys, py::handle buffers) {
    auto c = live();
    Keys k = to_keys(keys);
    Batch b = to_batch(buffers, k.keys.size(), value_or_raise(c->block_bytes(ns)), true);
    auto f = std::make_unique<PyFuture>(c, std::move(k.keys), std::move(b));
    f->start_get(ns);
    return f;
  }

  py::dict stats() const {
    auto s = live()->stats();
    py::dict d;
    d["transports"] = s.transports;
    d["bytes_put"] = s.bytes_put;
    d["bytes_got"] = s.bytes_got;
    d["verify_failures"] = s.verify_failures;
    return d;
  }

 private:
  std::shared_ptr<Client> live() const {
    if (!client_) throw StatusError(StatusCode::kFailedPrecondition, "the client is closed");
    return client_;
  }

  // Shared with the PyFutures of operations in flight.
  std::shared_ptr<Client> client_;
  std::string coordinator_;
  std::string secret_file_;  // empty: none given
  std::map<std::uintptr_t, HeldBuffer> registered_;  // by start address
  std::vector<std::uintptr_t> raw_registered_;        // register_buffer_ptr
};

}  // namespace
}  // namespace kvpool::python

PYBIND11_MODULE(_kvpool, m) {
  using namespace kvpool;
  using namespace kvpool::python;
  namespace py = pybind11;

  m.doc() = "kvpool runtime binding; use the kvpool package.";
  m.attr("__version__") = KVPOOL_VERSION;

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      try {
        py::object exc = to_exception(e.status());
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
      } catch (py::error_already_set& inner) {
        inner.restore();
      }
    }
  });

  py::class_<PyPutResult>(m, "PutResult", "What a put did: counts, and per key an outcome and an error.")
      .def_readonly("written", &PyPutResult::written, "keys written and committed by this call")
      .def_readonly("deduplicated", &PyPutResult::deduplicated, "keys already in the pool (nothing written)")
      .def_readonly("pending", &PyPutResult::pending, "keys another writer holds (nothing written)")
      .def_readonly("failed", &PyPutResult::failed, "keys that failed; see errors")
      .def_readonly("outcomes", &PyPutResult::outcomes, "per key: 'written', 'exists', 'pending' or 'failed'")
      .def_readonly("errors", &PyPutResult::errors, "per key: a kvpool.Error for a failed key, else None")
      .def("__repr__", [](const PyPutResult& r) {
        return "PutResult(written=" + std::to_string(r.written) + ", deduplicated=" + std::to_string(r.deduplicated) +
               ", pending=" + std::to_string(r.pending) + ", failed=" + std::to_string(r.failed) + ")";
      });

  py::class_<PyFuture>(m, "Future", "An asynchronous put or get.")
      .def("done", &PyFuture::done, "Whether the operation has completed. Never blocks.")
      .def("wait", &PyFuture::wait, py::arg("timeout_s") = py::none(),
           "Waits (GIL released) and returns the result: a PutResult for a put, the number of blocks loaded for "
           "a get. Raises the operation's kvpool.Error; TimeoutError if still running after timeout_s.")
      .def("result", &PyFuture::wait, py::arg("timeout_s") = py::none(), "Same as wait().");

  py::class_<PyClient>(m, "Client")
      .def(py::init<const std::string&, py::object, double, const std::string&, const std::string&>(),
           py::arg("coordinator"), py::arg("secret_file") = py::none(), py::kw_only(), py::arg("timeout_s") = 10.0,
           py::arg("client_id") = "", py::arg("tls") = "")
      .def("close", &PyClient::close)
      .def_property_readonly("closed", &PyClient::closed)
      .def_property_readonly("coordinator", &PyClient::coordinator)
      .def_property_readonly("secret_file", &PyClient::secret_file)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyClient& c, py::args) { c.close(); })
      .def(
          "register_namespace",
          [](PyClient& c, std::string model_id, std::string dtype, std::uint32_t num_layers,
             std::uint32_t num_kv_heads, std::uint32_t head_dim, std::uint32_t tokens_per_block, std::string layout,
             std::uint32_t tp_rank, std::uint32_t tp_size, std::uint64_t block_bytes) {
            return c.register_namespace(make_descriptor(std::move(model_id), std::move(dtype), num_layers,
                                                        num_kv_heads, head_dim, tokens_per_block, std::move(layout),
                                                        tp_rank, tp_size, block_bytes));
          },
          py::kw_only(), py::arg("model_id"), py::arg("dtype"), py::arg("num_layers"), py::arg("num_kv_heads"),
          py::arg("head_dim"), py::arg("tokens_per_block"), py::arg("layout"), py::arg("tp_rank") = 0,
          py::arg("tp_size") = 1, py::arg("block_bytes") = 0)
      .def("block_bytes", &PyClient::block_bytes, py::arg("namespace_id"))
      .def("register_buffer", &PyClient::register_buffer, py::arg("buffer"))
      .def("register_buffer_ptr", &PyClient::register_buffer_ptr, py::arg("ptr"), py::arg("length"))
      .def("unregister_buffer", &PyClient::unregister_buffer, py::arg("buffer"))
      .def("put", &PyClient::put, py::arg("namespace_id"), py::arg("keys"), py::arg("blocks"))
      .def("get", &PyClient::get, py::arg("namespace_id"), py::arg("keys"), py::arg("buffers"))
      .def("lookup", &PyClient::lookup, py::arg("namespace_id"), py::arg("keys"))
      .def("remove", &PyClient::remove, py::arg("namespace_id"), py::arg("keys"))
      .def("wait_for", &PyClient::wait_for, py::arg("namespace_id"), py::arg("keys"), py::arg("timeout_s"))
      .def("put_async", &PyClient::put_async, py::arg("namespace_id"), py::arg("keys"), py::arg("blocks"))
      .def("get_async", &PyClient::get_async, py::arg("namespace_id"), py::arg("keys"), py::arg("buffers"))
      .def("stats", &PyClient::stats);

  m.def(
      "prefix_keys",
      [](py::handle tokens, std::uint64_t namespace_id, std::uint32_t tokens_per_block) {
        if (tokens_per_block == 0) invalid("tokens_per_block is 0");
        auto t = to_tokens(tokens);
        std::vector<Key128> keys;
        {
          py::gil_scoped_release release;
          keys = prefix_keys(namespace_id, t, tokens_per_block);
        }
        py::list out;
        for (const auto& k : keys) out.append(key_to_bytes(k));
        return out;
      },
      py::arg("tokens"), py::arg("namespace_id"), py::arg("tokens_per_block"));


  m.def(
      "engine_keys",
      [](std::uint64_t namespace_id, py::handle keys) -> py::object {
        if (is_bytes_like(keys) || PyUnicode_Check(keys.ptr()) || is_int_like(keys)) {
          return key_to_bytes(engine_key_of(namespace_id, keys, 0));
        }
        if (!PySequence_Check(keys.ptr())) {
          throw py::type_error("keys: expected an engine key (bytes, str, int) or a sequence of them");
        }
        py::list out;
        std::size_t i = 0;
        for (py::handle item : py::reinterpret_borrow<py::sequence>(keys)) {
          out.append(key_to_bytes(engine_key_of(namespace_id, item, i++)));
        }
        return out;
      },
      py::arg("namespace_id"), py::arg("keys"),
      "kvpool keys for an engine's own block keys (bytes, str or int): one key, or a list for a sequence. "
      "XXH3-128 seeded with the namespace id over a type byte and the key's bytes; deterministic across "
      "processes and machines.");

  m.def(
      "set_log_level",
      [](const std::string& level) {
        if (!log::set_log_level(level)) invalid("not a log level: '" + level + "'");
      },
      py::arg("level"),
      "Level of kvpool's log lines on stderr: trace, debug, info, warn, error or off (default: "
      "KVPOOL_LOG_LEVEL, else info).");

  m.def(
      "namespace_id",
      [](std::string model_id, std::string dtype, std::uint32_t num_layers, std::uint32_t num_kv_heads,
         std::uint32_t head_dim, std::uint32_t tokens_per_block, std::string layout, std::uint32_t tp_rank,
         std::uint32_t tp_size, std::uint64_t block_bytes) {
        return namespace_id(make_descriptor(std::move(model_id), std::move(dtype), num_layers, num_kv_heads, head_dim,
                                            tokens_per_block, std::move(layout), tp_rank, tp_size, block_bytes));
      },
      py::kw_only(), py::arg("model_id"), py::arg("dtype"), py::arg("num_layers"), py::arg("num_kv_heads"),
      py::arg("head_dim"), py::arg("tokens_per_block"), py::arg("layout"), py::arg("tp_rank") = 0,
      py::arg("tp_size") = 1, py::arg("block_bytes") = 0);
}
