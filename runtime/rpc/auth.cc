#include "runtime/rpc/auth.h"

#include "runtime/common/codec.h"
#include "runtime/common/secret.h"
#include "runtime/common/tenants.h"

namespace kvpool::rpc {

// Field lists (codec.h): the payloads' wire formats, and the challenge's
// part of both MACs.
template <class Io>
void fields(Io& io, AuthChallenge& c) {
  io(c.scheme, c.flags);
  io.bytes(c.server_nonce, kAuthNonceBytes);
}

template <class Io>
void fields(Io& io, ClientProof& p) {
  io(p.scheme);
  io.bytes(p.client_nonce, kAuthNonceBytes);
  io.bytes(p.mac, kAuthMacBytes);
  if (p.scheme == kAuthHmacSha256Tenant) io.bytes(p.tenant, kMaxTenantNameBytes);
}

namespace {

// What both MACs cover first: a label distinct per side (and for a tenant,
// with its name), the challenge, the client's nonce and the hello, all but
// its auth field (which carries the client's MAC).
Writer mac_input(std::string_view side, std::string_view tenant, const AuthChallenge& challenge,
                 std::string_view client_nonce, const Hello& hello) {
  Writer w;
  if (tenant.empty()) {
    w.bytes("kvpool auth v1 " + std::string(side));
  } else {
    w.bytes("kvpool auth v1 tenant " + std::string(side));
    w.bytes(tenant);
  }
  w(challenge);
  w.bytes(client_nonce);
  w(hello.version, static_cast<std::uint8_t>(hello.role), hello.id);
  return w;
}

}  // namespace

std::string encode_auth_challenge(const AuthChallenge& challenge) { return encode_fields(challenge); }

Result<AuthChallenge> decode_auth_challenge(std::string_view payload) {
  AuthChallenge c;
  if (Status s = decode_fields(payload, c, "auth challenge"); !s.ok()) return tl::unexpected(std::move(s));
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

std::string encode_client_proof(const ClientProof& proof) { return encode_fields(proof); }

Result<ClientProof> decode_client_proof(std::string_view payload) {
  ClientProof p;
  if (Status s = decode_fields(payload, p, "hello auth"); !s.ok()) return tl::unexpected(std::move(s));
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
  return hmac_sha256(key, mac_input("client", tenant, challenge, client_nonce, hello).buffer());
}

std::string server_mac(std::string_view key, const AuthChallenge& challenge, std::string_view client_nonce,
                       const Hello& hello, const HelloReply& reply, std::string_view tenant) {
  Writer w = mac_input("server", tenant, challenge, client_nonce, hello);
  w(static_cast<std::uint8_t>(reply.role), reply.server_id, reply.server_version);
  return hmac_sha256(key, w.buffer());
}

}  // namespace kvpool::rpc
