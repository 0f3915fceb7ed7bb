#!/usr/bin/env python3
"""Acceptance check with a stock client (Python grpcio) that has never seen our protos.

Starts `mesh-controller launch` in a temporary directory with free ports, reads the
status table, and for every gRPC port: lists the services by reflection (v1alpha, the
protocol grpcio-reflection speaks; the Rust tests cover v1), resolves every omnimesh service's descriptor by reflection, and checks
`grpc.health.v1.Health/Check` answers SERVING; on core-engine it creates a key, encrypts
and decrypts with messages built only from reflected descriptors. Then stops the launcher with SIGTERM and
checks that it exits 0 with no child left. Prints a `N passed, N failed` line.

Usage: check.py <directory of the service binaries>
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf import timestamp_pb2  # noqa: F401 (registers the well-known type)

READY_TIMEOUT_S = 90
ROW = re.compile(r"^(\S+)\s+(\d+\.\d+\.\d+\.\d+:\d+)\s+SERVING\s+(\d+)$")
ADMIN = re.compile(r"gateway admin\s+http://(\S+)/metrics")


def list_services(channel):
    stub = v1alpha_grpc.ServerReflectionStub(channel)
    request = v1alpha_pb2.ServerReflectionRequest(list_services="")
    response = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    return sorted(s.name for s in response.list_services_response.service)


def file_containing(channel, symbol):
    stub = v1alpha_grpc.ServerReflectionStub(channel)
    request = v1alpha_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    response = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    if response.HasField("error_response"):
        raise AssertionError(f"{symbol}: {response.error_response.error_message}")
    names = []
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        names.extend(f"{proto.package}.{s.name}" for s in proto.service)
    return names


def reflected_pool(channel, symbol):
    """A descriptor pool built from what reflection sends (the file and its dependencies);
    a well-known type the server leaves out comes from protobuf's own copy."""
    stub = v1alpha_grpc.ServerReflectionStub(channel)
    request = v1alpha_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    response = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    sent = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        sent[proto.name] = proto
    pool, added = descriptor_pool.DescriptorPool(), set()

    def add(name):
        if name in added:
            return
        proto = sent.get(name)
        if proto is None and name.startswith("google/protobuf/"):
            proto = descriptor_pb2.FileDescriptorProto()
            descriptor_pool.Default().FindFileByName(name).CopyToProto(proto)
        elif proto is None:
            # Not sent with the symbol's file: ask for it by name.
            by_name = v1alpha_pb2.ServerReflectionRequest(file_by_filename=name)
            reply = next(stub.ServerReflectionInfo(iter([by_name]), timeout=5))
            for raw in reply.file_descriptor_response.file_descriptor_proto:
                fetched = descriptor_pb2.FileDescriptorProto.FromString(raw)
                sent.setdefault(fetched.name, fetched)
            proto = sent[name]
        for dependency in proto.dependency:
            add(dependency)
        pool.Add(proto)
        added.add(name)

    for name in list(sent):
        add(name)
    return pool


def call(channel, pool, method, request_type, response_type, **fields):
    request_class = message_factory.GetMessageClass(pool.FindMessageTypeByName(request_type))
    response_class = message_factory.GetMessageClass(pool.FindMessageTypeByName(response_type))
    stub = channel.unary_unary(
        method,
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    return stub(request_class(**fields), timeout=10)


def encrypt_and_decrypt(channel, create=True):
    """CreateKey (on the first replica), Encrypt, Decrypt on core-engine with messages
    built from reflection."""
    pool = reflected_pool(channel, "omnimesh.engine.v1.Engine")
    base = "/omnimesh.engine.v1.Engine/"
    if create:
        call(channel, pool, base + "CreateKey", "omnimesh.engine.v1.CreateKeyRequest",
             "omnimesh.engine.v1.CreateKeyResponse", name="stock-client")
    item = message_factory.GetMessageClass(pool.FindMessageTypeByName("omnimesh.engine.v1.EncryptItem"))
    encrypted = call(channel, pool, base + "Encrypt", "omnimesh.engine.v1.EncryptRequest",
                     "omnimesh.engine.v1.EncryptResponse", key_name="stock-client",
                     items=[item(plaintext=b"hello from grpcio", associated_data=b"ad", reference="r1")])
    ciphertext = encrypted.results[0].ciphertext
    ditem = message_factory.GetMessageClass(pool.FindMessageTypeByName("omnimesh.engine.v1.DecryptItem"))
    decrypted = call(channel, pool, base + "Decrypt", "omnimesh.engine.v1.DecryptRequest",
                     "omnimesh.engine.v1.DecryptResponse", key_name="stock-client",
                     items=[ditem(ciphertext=ciphertext, associated_data=b"ad", reference="r1")])
    return ciphertext, decrypted.results[0].plaintext


def main():
    bin_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release")
    passed, failed = 0, 0

    def check(name, condition, detail=""):
        nonlocal passed, failed
        if condition:
            passed += 1
            print(f"ok    {name}")
        else:
            failed += 1
            print(f"FAIL  {name} {detail}")

    with tempfile.TemporaryDirectory() as work:
        config = os.path.join(work, "omnimesh.toml")
        with open(config, "w") as f:
            f.write(
                '[core-engine.listen]\ngrpc = "127.0.0.1:0"\n'
                '[omniterm-interface.listen]\ngrpc = "127.0.0.1:0"\n'
                '[proxy-gateway.listen]\nhttp = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
                '[mesh-controller.listen]\ngrpc = "127.0.0.1:0"\n'
            )
        env = dict(os.environ, OMNIMESH_CONFIG=config)
        launcher = subprocess.Popen(
            [os.path.join(bin_dir, "mesh-controller"), "launch"],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        rows, grpc_ports = {}, {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            for line in launcher.stdout:
                match = ROW.match(line.strip())
                if match:
                    rows[match.group(1)] = (match.group(2), int(match.group(3)))
                admin = ADMIN.search(line)
                if admin:
                    grpc_ports["proxy-gateway admin"] = admin.group(1)
                if line.startswith("Press Ctrl-C") or time.monotonic() > deadline:
                    break
            check("five instances of four services SERVING in the launcher's table",
                  sorted(rows) == ["core-engine-0", "core-engine-1", "mesh-controller",
                                   "omniterm-interface-0", "proxy-gateway-0"], str(rows))
            check("the gateway's admin address is printed", "proxy-gateway admin" in grpc_ports)
            grpc_ports.update((service, address) for service, (address, _pid) in rows.items())

            for service, address in sorted(grpc_ports.items()):
                with grpc.insecure_channel(address) as channel:
                    health = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=5
                    )
                    check(f"{service} {address} health SERVING",
                          health.status == health_pb2.HealthCheckResponse.SERVING)
                    if service.startswith("proxy-gateway-"):
                        # The data plane answers health for the gateway and routes the
                        # rest; the gateway's own services are on its admin port.
                        continue
                    listed = list_services(channel)
                    ours = [name for name in listed if name.startswith("omnimesh.")]
                    check(f"{service} reflection v1alpha lists {ours}", bool(ours), str(listed))
                    for name in ours:
                        check(f"{service} describes {name} by reflection",
                              name in file_containing(channel, name))
                    if service.startswith("core-engine-"):
                        # Both replicas share the key store: the key made on replica 0
                        # serves replica 1.
                        first = service == "core-engine-0"
                        ciphertext, plaintext = encrypt_and_decrypt(channel, create=first)
                        check(f"{service} encrypts for a stock client",
                              ciphertext.startswith("omnimesh:v1:"), ciphertext)
                        check(f"{service} decrypts it again", plaintext == b"hello from grpcio",
                              repr(plaintext))
        finally:
            launcher.send_signal(signal.SIGTERM)
            try:
                code = launcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                launcher.kill()
                code = None
        check("launcher exits 0 on SIGTERM", code == 0, f"exit code {code}")
        for service, (_address, pid) in sorted(rows.items()):
            try:
                os.kill(pid, 0)
                gone = False
            except ProcessLookupError:
                gone = True
            check(f"{service} (pid {pid}) stopped", gone)

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
