#include "runtime/rpc/auth.h"

#include "runtime/common/codec.h"
#include "runtime/common/secret.h"
#include "runtime/common/tenants.h"

namespace kvpool::rpc {
namespace {

void put_hello(Writer& w, const Hello& hello) {
  w.u16(hello.version);
  w.u8(static_cast<std::uint8_t>(hello.role));
  w.bytes(hello.id);
}

void put_challenge(Writer& w, const AuthChallenge& c) {
  w.u8(c.scheme);
  w.u8(c.flags);
  w.bytes(c.server_nonce);
}

}  // namespace

std::string encode_auth_challenge(const AuthChallenge& challenge) {
  Writer w;
  w.u8(challenge.scheme);
  w.u8(challenge.flags);
  w.bytes(challenge.server_nonce);
  return w.take();
}

Result<AuthChallenge> decode_auth_challenge(std::string_view payload) {
  Reader r(payload);
  AuthChallenge c;
  c.scheme = r.u8();
  c.flags = r.u8();
  c.server_nonce = r.bytes(kAuthNonceBytes);
  if (Status s = r.finish("auth challenge"); !s.ok()) return tl::unexpected(std::move(s));
  if (c.scheme != kAuthHmacSha256) {
    return make_error(StatusCode::kInvalidArgument, "auth challenge with unknown scheme " + std::to_string(c.scheme));
  }
  if ((c.flags & ~kAuthFlagTls) != 0) {
    return make_error(StatusCode::kInvalidArgument, "auth challenge with unknown flags " + std::to_string(c.flags));
  }
  if (c.server_nonce.size() != kAuthNonceBytes) {
    return make_error(StatusCode::kInvalidArgument,
                      "auth challenge nonce of " + std::to_string(c.server_nonce.size()) + " bytes");
  }
  return c;
}

std::string encode_client_proof(const ClientProof& proof) {
  Writer w;
  w.u8(proof.scheme);
  w.bytes(proof.client_nonce);
  w.bytes(proof.mac);
  if (proof.scheme == kAuthHmacSha256Tenant) w.bytes(proof.tenant);
  return w.take();
}

Result<ClientProof> decode_client_proof(std::string_view payload) {
  Reader r(payload);
  ClientProof p;
  p.scheme = r.u8();
  p.client_nonce = r.bytes(kAuthNonceBytes);
  p.mac = r.bytes(kAuthMacBytes);
  if (p.scheme == kAuthHmacSha256Tenant) p.tenant = r.bytes(kMaxTenantNameBytes);
  if (Status s = r.finish("hello auth"); !s.ok()) return tl::unexpected(std::move(s));
  if (p.scheme != kAuthHmacSha256 && p.scheme != kAuthHmacSha256Tenant) {
    return make_error(StatusCode::kInvalidArgument, "hello auth with unknown scheme " + std::to_string(p.scheme));
  }
  if (p.scheme == kAuthHmacSha256Tenant && !valid_tenant_name(p.tenant)) {
    return make_error(StatusCode::kInvalidArgument, "hello auth with an invalid tenant name");
  }
  if (p.client_nonce.size() != kAuthNonceBytes || p.mac.size() != kAuthMacBytes) {
    return make_error(StatusCode::kInvalidArgument, "hello auth with a nonce or MAC of the wrong length");
  }
  return p;
}

std::string client_mac(std::string_view key, const AuthChallenge& challenge, std::string_view client_nonce,
                       const Hello& hello, std::string_view tenant) {
  Writer w;
  if (tenant.empty()) {
    w.bytes("kvpool auth v1 client");
  } else {
    w.bytes("kvpool auth v1 tenant client");
    w.bytes(tenant);
  }
  put_challenge(w, challenge);
  w.bytes(client_nonce);
  put_hello(w, hello);
  return hmac_sha256(key, w.buffer());
}

std::string server_mac(std::string_view key, const AuthChallenge& challenge, std::string_view client_nonce,
                       const Hello& hello, const HelloReply& reply, std::string_view tenant) {
  Writer w;
  if (tenant.empty()) {
    w.bytes("kvpool auth v1 server");
  } else {
    w.bytes("kvpool auth v1 tenant server");
    w.bytes(tenant);
  }
  put_challenge(w, challenge);
  w.bytes(client_nonce);
  put_hello(w, hello);
  w.u8(static_cast<std::uint8_t>(reply.role));
  w.bytes(reply.server_id);
  w.bytes(reply.server_version);
  return hmac_sha256(key, w.buffer());
}

}  // namespace kvpool::rpc
