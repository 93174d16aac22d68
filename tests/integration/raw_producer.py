"""Records no well-behaved client writes: a header whose *name* is not UTF-8.

confluent-kafka's Python producer turns a ``bytes`` header name into its ``str()``, and the
Java client encodes names as UTF-8, but the protocol allows any bytes and librdkafka's C API
writes them. Its consumer side then fails inside ``Message.headers()`` (SystemError), which
is what the bridge must survive. This calls librdkafka's C API through ctypes, using the copy
bundled with confluent-kafka.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import confluent_kafka

# rd_kafka_vtype_t
_END, _TOPIC, _PARTITION, _VALUE, _KEY, _HEADERS = 0, 1, 3, 4, 5, 10


def _librdkafka() -> ctypes.CDLL:
    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        raise RuntimeError(f"librdkafka not found in {libs}")
    lib = ctypes.CDLL(str(found[0]))
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.rd_kafka_conf_set.argtypes += [ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_headers_new.restype = ctypes.c_void_p
    lib.rd_kafka_headers_new.argtypes = [ctypes.c_size_t]
    lib.rd_kafka_header_add.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ssize_t]
    lib.rd_kafka_header_add.argtypes += [ctypes.c_char_p, ctypes.c_ssize_t]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


def produce_with_raw_header(
    bootstrap: str, topic: str, partition: int, key: bytes, value: bytes, header: bytes
) -> None:
    """One record on ``topic[partition]`` with a header named ``header`` (any bytes)."""
    lib = _librdkafka()
    error = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    if lib.rd_kafka_conf_set(conf, b"bootstrap.servers", bootstrap.encode(), error, 512) != 0:
        raise RuntimeError(error.value.decode())
    producer = lib.rd_kafka_new(0, conf, error, 512)  # RD_KAFKA_PRODUCER
    if not producer:
        raise RuntimeError(error.value.decode())
    try:
        headers = lib.rd_kafka_headers_new(1)
        lib.rd_kafka_header_add(headers, header, len(header), b"v", 1)
        code = lib.rd_kafka_producev(
            ctypes.c_void_p(producer),
            ctypes.c_int(_TOPIC),
            ctypes.c_char_p(topic.encode()),
            ctypes.c_int(_PARTITION),
            ctypes.c_int32(partition),
            ctypes.c_int(_KEY),
            ctypes.c_char_p(key),
            ctypes.c_size_t(len(key)),
            ctypes.c_int(_VALUE),
            ctypes.c_char_p(value),
            ctypes.c_size_t(len(value)),
            ctypes.c_int(_HEADERS),
            ctypes.c_void_p(headers),
            ctypes.c_int(_END),
        )
        if code != 0:
            raise RuntimeError(f"rd_kafka_producev failed: {code}")
        if lib.rd_kafka_flush(ctypes.c_void_p(producer), 30_000) != 0:
            raise RuntimeError("the raw record was not delivered within 30 s")
    finally:
        lib.rd_kafka_destroy(ctypes.c_void_p(producer))
