"""The sans-IO security pieces of Kafka's wire, without processes: the SASL state machine
(a hypothesis state machine against a model, and its corners), SCRAM (credentials, decoys,
librdkafka's doubled nonce), bare SASL tokens in the connection, TLS over memory BIOs,
certificate principals, the ACL APIs' translation and the listener security settings."""

from __future__ import annotations

import ssl
import struct
from typing import Any

import pytest
import scramp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from kafka.protocol.admin import CreateAclsRequest, DescribeAclsRequest
from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
from kafka.protocol.parser import KafkaProtocol
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

from kvlog.errors import InvalidConfigError, InvalidRequestError
from kvlog.ipc.kafka.codec import ApiKey
from kvlog.ipc.kafka.connection import KafkaConnection, KafkaRequest, RawToken
from kvlog.ipc.kafka.sasl import PASS, Refuse, Respond, SaslServer, State
from kvlog.ipc.kafka.scram import (
    DecoySalts,
    ScramCredential,
    ScramExchange,
    scram_credential,
)
from kvlog.workers.acl import AclEntry
from kvlog.workers.kafka_handlers.acls import acl_entry, acl_filter
from kvlog.workers.kafka_security import KafkaSecurityConfig
from kvlog.workers.kafka_tls import TlsError, TlsSession, certificate_principal

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
CREDENTIALS = {(m, "alice"): scram_credential(m, "secret") for m in MECHANISMS}
DECOYS = DecoySalts(b"k" * 32)


def lookup(mechanism: str, user: str) -> ScramCredential | None:
    return CREDENTIALS.get((mechanism, user))


def request(body: Any) -> KafkaRequest:
    return KafkaRequest(body.API_KEY, body.API_VERSION, 1, "t", body, 0)


def handshake(mechanism: str, version: int = 1) -> KafkaRequest:
    return request(SaslHandshakeRequest(mechanism=mechanism, version=version))


def authenticate(token: bytes, version: int = 1) -> KafkaRequest:
    return request(SaslAuthenticateRequest(auth_bytes=token, version=version))


def server() -> SaslServer:
    return SaslServer(MECHANISMS, lookup, DECOYS)


# -- the state machine, against a model ------------------------------------------------------


class SaslMachine(RuleBasedStateMachine):
    """Anything a client sends, in any order: the server authenticates only after a
    SaslHandshake with an enabled mechanism and the right SCRAM messages in order, passes
    nothing but ApiVersions before, and every refusal ends the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.reconnect()

    @precondition(lambda self: self.closed)
    @rule()
    def reconnect(self) -> None:
        self.sasl = server()
        self.closed = False
        self.client: scramp.ScramClient | None = None
        self.step = 0  # 0: nothing, 1: handshake done, 2: client-first sent, 3: logged in

    def feed(self, req: KafkaRequest) -> Any:
        decision = self.sasl.on_request(req)
        if isinstance(decision, Refuse) or (
            isinstance(decision, Respond) and decision.close_reason is not None
        ):
            self.closed = True
        return decision

    @precondition(lambda self: not self.closed)
    @rule()
    def api_versions(self) -> None:
        decision = self.feed(request(ApiVersionsRequest(version=2)))
        if self.step in (0, 3):  # before a handshake and after the login
            assert decision is PASS and not self.closed
        else:  # inside an exchange only SaslAuthenticate may come (Kafka's rule)
            assert isinstance(decision, Refuse) and self.closed

    @precondition(lambda self: not self.closed)
    @rule(mechanism=st.sampled_from([*MECHANISMS, "PLAIN", "GSSAPI"]))
    def sasl_handshake(self, mechanism: str) -> None:
        decision = self.feed(handshake(mechanism))
        if self.sasl.authenticated:
            assert isinstance(decision, Respond) and decision.response.error_code == 34
        elif self.step == 0 and mechanism in MECHANISMS:
            assert isinstance(decision, Respond) and decision.response.error_code == 0
            self.step = 1
            self.client = scramp.ScramClient([mechanism], "alice", "secret")
        else:
            assert self.closed

    @precondition(lambda self: not self.closed and self.step == 1)
    @rule()
    def client_first(self) -> None:
        assert self.client is not None
        decision = self.feed(authenticate(self.client.get_client_first().encode()))
        assert isinstance(decision, Respond) and decision.response.error_code == 0
        self.client.set_server_first(decision.response.auth_bytes.decode())
        self.step = 2

    @precondition(lambda self: not self.closed and self.step == 2)
    @rule()
    def client_final(self) -> None:
        assert self.client is not None
        decision = self.feed(authenticate(self.client.get_client_final().encode()))
        assert isinstance(decision, Respond) and decision.principal == "alice"
        self.client.set_server_final(decision.response.auth_bytes.decode())
        self.step = 3

    @precondition(lambda self: not self.closed)
    @rule(token=st.binary(max_size=64))
    def garbage_token(self, token: bytes) -> None:
        decision = self.feed(authenticate(token))
        if self.sasl.authenticated:
            assert isinstance(decision, Respond) and decision.response.error_code == 34
        else:
            assert self.closed and not self.sasl.authenticated

    @precondition(lambda self: not self.closed)
    @rule()
    def metadata(self) -> None:
        decision = self.feed(request(MetadataRequest(topics=[], version=1)))
        if self.step == 3:
            assert decision is PASS
        else:
            assert isinstance(decision, Refuse) and self.closed

    @invariant()
    def authenticated_only_by_the_proof(self) -> None:
        assert self.sasl.authenticated == (self.step == 3)
        assert (self.sasl.principal is not None) == self.sasl.authenticated


TestSaslMachine = SaslMachine.TestCase
TestSaslMachine.settings = settings(
    max_examples=150,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- corners ----------------------------------------------------------------------------------


def login(
    sasl: SaslServer, user: str, password: str, mechanism: str = "SCRAM-SHA-256"
) -> list[Any]:
    client = scramp.ScramClient([mechanism], user, password)
    out = [sasl.on_request(handshake(mechanism))]
    first = sasl.on_request(authenticate(client.get_client_first().encode()))
    out.append(first)
    client.set_server_first(first.response.auth_bytes.decode())
    out.append(sasl.on_request(authenticate(client.get_client_final().encode())))
    return out


def test_a_wrong_password_and_an_unknown_user_fail_alike() -> None:
    wrong, unknown = login(server(), "alice", "nope"), login(server(), "mallory", "x")
    for steps in (wrong, unknown):
        final = steps[-1]
        assert final.response.error_code == 58 and final.close_reason is not None
        assert final.response.error_message == (
            "Authentication failed during authentication due to invalid credentials with "
            "SASL mechanism SCRAM-SHA-256"
        )
    salts = [s[1].response.auth_bytes.decode().split(",")[1] for s in (wrong, unknown)]
    assert len(salts[0]) == len(salts[1])
    again = login(server(), "mallory", "y")[1].response.auth_bytes.decode().split(",")[1]
    assert again == salts[1]  # a decoy salt is stable, as a real one is


def test_an_authorization_id_is_refused() -> None:
    sasl = server()
    sasl.on_request(handshake("SCRAM-SHA-256"))
    decision = sasl.on_request(authenticate(b"n,a=admin,n=alice,r=0123456789abcdef"))
    assert decision.response.error_code == 58 and "authzid" in (sasl.failure or "")


def test_librdkafkas_doubled_nonce_is_accepted_and_nothing_else() -> None:
    credential = CREDENTIALS[("SCRAM-SHA-256", "alice")]

    def final_with(nonce_of: Any) -> bool:
        exchange = ScramExchange("SCRAM-SHA-256", lookup, DECOYS, "servernonce")
        client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "secret", c_nonce="clientnonce")
        client.set_server_first(exchange.step(client.get_client_first().encode()).decode())
        # A client-final built by hand with the echoed nonce the test gives.
        nonce = nonce_of("clientnonce", "clientnonceservernonce")
        without_proof = f"c=biws,r={nonce}"
        server_first = f"r=clientnonceservernonce,s={_b64(credential.salt)},i=4096"
        auth = f"n=alice,r=clientnonce,{server_first},{without_proof}"
        proof = _proof(credential, auth)
        try:
            exchange.step(f"{without_proof},p={proof}".encode())
        except Exception:
            return False
        return True

    assert final_with(lambda c, combined: combined)  # RFC 5802
    assert final_with(lambda c, combined: c + combined)  # librdkafka < 2.6.1
    assert not final_with(lambda c, combined: "x" + combined)  # anything else
    assert not final_with(lambda c, combined: c)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _proof(credential: ScramCredential, auth_message: str) -> str:
    import hashlib
    import hmac

    salted = hashlib.pbkdf2_hmac("sha256", b"secret", credential.salt, credential.iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    signature = hmac.new(
        hashlib.sha256(client_key).digest(), auth_message.encode(), hashlib.sha256
    ).digest()
    return _b64(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))


def test_credentials_check_their_fields() -> None:
    good = scram_credential("SCRAM-SHA-512", "pw", 8192)
    assert ScramCredential.from_wire(good.to_wire()) == good
    assert len(good.stored_key) == 64 and good.iterations == 8192
    for bad in (
        {**good.to_wire(), "mechanism": "PLAIN"},
        {**good.to_wire(), "iterations": 100},
        {**good.to_wire(), "stored_key": b"short"},
        {"mechanism": "SCRAM-SHA-256"},
    ):
        with pytest.raises(ValueError):
            ScramCredential.from_wire(bad)
    with pytest.raises(ValueError, match="16384"):
        scram_credential("SCRAM-SHA-256", "pw", 100_000)


def test_bare_tokens_after_a_v0_handshake() -> None:
    sasl, conn = server(), KafkaConnection()
    protocol = KafkaProtocol(client_id="t")
    protocol.send_request(SaslHandshakeRequest(mechanism="SCRAM-SHA-256", version=0))
    conn.receive_data(protocol.send_bytes())
    req = conn.next_event()
    decision = sasl.on_request(req)
    assert isinstance(decision, Respond) and decision.raw_tokens and sasl.state is State.RAW
    conn.send_response(req, decision.response)
    assert conn.data_to_send()  # the handshake's response
    conn.raw_tokens = True
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "secret")
    for message in (client.get_client_first, client.get_client_final):
        token = message().encode()
        conn.receive_data(struct.pack(">i", len(token)) + token)
        event = conn.next_event()
        assert isinstance(event, RawToken) and event.data == token
        decision = sasl.on_raw_token(event.data)
        assert isinstance(decision, Respond)
        conn.send_raw(event, decision.response)
        conn.raw_tokens = decision.raw_tokens
        answer = b"".join(bytes(b) for b in conn.data_to_send())
        assert struct.unpack(">i", answer[:4])[0] == len(answer) - 4  # no header: bare
        reply = answer[4:].decode()
        if message == client.get_client_first:
            client.set_server_first(reply)
        else:
            client.set_server_final(reply)
    assert sasl.principal == "alice" and not conn.raw_tokens
    # A short frame is a request again once bare tokens are over.
    conn.receive_data(struct.pack(">i", 4) + b"abcd")
    with pytest.raises(Exception, match="shorter than any"):
        conn.next_event()


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
    from tls_util import Pki

    pki = Pki(tmp_path_factory.mktemp("pki"))
    return pki, pki.issue("server", "127.0.0.1", server=True), pki.issue("alice", "alice")


def pump(
    client: ssl.SSLObject, c_in: ssl.MemoryBIO, c_out: ssl.MemoryBIO, tls: TlsSession
) -> list[bytes]:
    """Move bytes both ways until neither side has more; returns the server's plaintext."""
    plaintext = []
    for _ in range(20):
        data = c_out.read()
        if data:
            plaintext += tls.receive(data)
        back = tls.pending_output()
        if back:
            c_in.write(back)
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        if not data and not back:
            break
    return plaintext


def test_tls_session_handshake_data_and_client_certificate(certs: Any) -> None:
    pki, (cert, key), alice = certs
    config = KafkaSecurityConfig(
        ("SCRAM-SHA-256",), str(cert), str(key), str(pki.ca_file), "required"
    )
    tls = TlsSession(config.ssl_context())
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(*alice)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    pump(client, c_in, c_out, tls)
    assert tls.handshake_done
    assert certificate_principal(tls.peer_certificate()) == "alice"
    client.write(b"hello kafka")
    assert b"".join(pump(client, c_in, c_out, tls)) == b"hello kafka"
    c_in.write(tls.encrypt([b"resp", memoryview(b"onse")]))
    assert client.read(100) == b"response"
    with pytest.raises(TlsError):
        TlsSession(config.ssl_context()).receive(b"\x00\x00\x00\x10not a tls record")


def test_certificate_principal_is_the_cn() -> None:
    subject = ((("organizationName", "Example"),), (("commonName", "alice"),))
    assert certificate_principal({"subject": subject}) == "alice"
    assert certificate_principal({"subject": ((("organizationName", "Example"),),)}) is None


# -- settings -----------------------------------------------------------------------------------


def test_kafka_security_settings(tmp_path: Any) -> None:
    none = KafkaSecurityConfig()
    assert none.protocol(False) == "PLAINTEXT" and none.protocol(True) is None
    assert "kvlog users add" in (none.off_reason(True) or "")
    assert KafkaSecurityConfig(("SCRAM-SHA-256",)).protocol(True) == "SASL_PLAINTEXT"
    for bad, message in (
        (KafkaSecurityConfig(("SCRAM-SHA-256",)), "need security on"),
        (KafkaSecurityConfig(ssl_cafile="ca.pem"), "need security on"),
    ):
        with pytest.raises(InvalidConfigError, match=message):
            bad.validate(False)
    for bad, message in (
        (KafkaSecurityConfig(ssl_client_auth="required"), "need kafka_ssl_certfile"),
        (
            KafkaSecurityConfig(ssl_certfile="c", ssl_client_auth="required"),
            "needs kafka_ssl_cafile",
        ),
        (KafkaSecurityConfig(ssl_certfile=str(tmp_path / "missing.pem")), "does not load"),
        (KafkaSecurityConfig(("PLAIN",)), "not served"),
    ):
        with pytest.raises(InvalidConfigError, match=message):
            bad.validate(True)


# -- the ACL APIs' translation ------------------------------------------------------------------


def creation(**kw: Any) -> Any:
    fields = {
        "resource_type": 2,
        "resource_name": "orders",
        "resource_pattern_type": 3,
        "principal": "User:alice",
        "host": "*",
        "operation": 3,
        "permission_type": 3,
        **kw,
    }
    return CreateAclsRequest.AclCreation(**fields)


def test_acl_creations_translate_exactly_or_are_refused() -> None:
    assert acl_entry(creation(), 1) == AclEntry("alice", "topic", "orders", "read")
    assert acl_entry(creation(resource_type=4, resource_name="kafka-cluster", operation=7), 1) == (
        AclEntry("alice", "cluster", "kvlog", "alter")
    )
    assert acl_entry(creation(principal="User:*", resource_name="*"), 0).principal == "*"
    for bad in (
        {"resource_pattern_type": 4},
        {"permission_type": 2},
        {"principal": "Group:x"},
        {"principal": "alice"},
        {"host": "10.0.0.1"},
        {"operation": 2},
        {"operation": 12},
        {"resource_type": 5},
        {"resource_type": 4, "resource_name": "other"},
    ):
        with pytest.raises(InvalidRequestError, match="kvlog ACLs allow"):
            acl_entry(creation(**bad), 1)


def describe_filter(**kw: Any) -> Any:
    fields = {
        "resource_type_filter": 1,
        "resource_name_filter": None,
        "pattern_type_filter": 1,
        "principal_filter": None,
        "host_filter": None,
        "operation": 1,
        "permission_type": 1,
        **kw,
    }
    return DescribeAclsRequest(version=1, **fields)


ENTRIES = [
    AclEntry("alice", "topic", "orders", "read"),
    AclEntry("alice", "topic", "*", "write"),
    AclEntry("bob", "group", "g", "read"),
    AclEntry("bob", "cluster", "kvlog", "describe"),
]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, ENTRIES),
        ({"principal_filter": "User:alice"}, ENTRIES[:2]),
        ({"resource_type_filter": 2, "resource_name_filter": "orders"}, ENTRIES[:1]),
        (
            {"resource_type_filter": 2, "resource_name_filter": "orders", "pattern_type_filter": 2},
            ENTRIES[:2],
        ),
        ({"resource_type_filter": 4, "resource_name_filter": "kafka-cluster"}, ENTRIES[3:]),
        ({"operation": 3}, [ENTRIES[0], ENTRIES[2]]),
        ({"pattern_type_filter": 4}, []),
        ({"permission_type": 2}, []),
        ({"host_filter": "10.0.0.1"}, []),
        ({"principal_filter": "Group:x"}, []),
        ({"operation": 12}, []),
    ],
)
def test_acl_filters_match_what_kafka_would(
    fields: dict[str, Any], expected: list[AclEntry]
) -> None:
    wanted = acl_filter(describe_filter(**fields), 1)
    assert [e for e in ENTRIES if wanted.matches(e)] == expected
    # The removals a DeleteAcls filter makes delete exactly the same entries.
    removed = {
        e
        for r in wanted.removals()
        for e in ENTRIES
        if all(
            v is None or getattr(e, k) == v
            for k, v in (
                ("principal", r.principal),
                ("resource_type", r.resource_type),
                ("name", r.name),
                ("operation", r.operation),
            )
        )
    }
    assert removed == set(expected)


def test_acl_filters_kafka_rejects_are_refused() -> None:
    for bad in (
        {"resource_type_filter": 0},
        {"pattern_type_filter": 0},
        {"operation": 0},
        {"permission_type": 0},
    ):
        with pytest.raises(InvalidRequestError):
            acl_filter(describe_filter(**bad), 1)


def test_the_served_sasl_and_acl_versions() -> None:
    from kvlog.ipc.kafka.versions import SERVED

    for key in (
        ApiKey.SaslHandshake,
        ApiKey.SaslAuthenticate,
        ApiKey.DescribeAcls,
        ApiKey.CreateAcls,
        ApiKey.DeleteAcls,
    ):
        entry = SERVED.get(key)
        assert entry is not None and (entry.min_version, entry.max_version) == (0, 1)
