#pragma once
// TLS on the control channel, when a server asks for it (auth.h,
// kAuthFlagTls): TLS 1.3 keyed by an external pre-shared key derived from
// the cluster secret, PSK = HMAC-SHA256(secret, "kvpool control tls psk v1"),
// so no certificates are needed and only holders of the secret complete the
// handshake. Encrypts and integrity-protects the hello and every frame after
// it; the UCX data path stays unencrypted (SECURITY.md).

#include <boost/asio/ssl/context.hpp>
#include <boost/system/error_code.hpp>
#include <memory>
#include <string>
#include <string_view>

#include "kvpool/status.h"

namespace kvpool::rpc {

// An Asio SSL context set up for PSK-only TLS 1.3, with the key it serves.
// Shared by every connection of one Server or owned by one Client; the
// context is read-only after creation (thread-safe to use from any thread).
struct TlsContext {
  explicit TlsContext(boost::asio::ssl::context::method method) : ctx(method) {}
  std::string psk;  // must outlive ctx's use: OpenSSL's callbacks read it
  boost::asio::ssl::context ctx;
};

// kInternal when OpenSSL refuses the settings.
Result<std::unique_ptr<TlsContext>> make_tls_context(bool server, std::string_view secret_key);

// A failed TLS handshake as a Status: an alert from TLS itself (the peer
// derived another key: the secrets differ) is kPermissionDenied; a network
// error maps as to_status() does.
Status tls_handshake_status(const boost::system::error_code& ec, std::string_view what);

}  // namespace kvpool::rpc
