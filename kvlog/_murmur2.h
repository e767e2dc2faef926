/* Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), byte for byte; shared
 * by _murmur2.c and the accumulator (_acc_send.c, _acc_send_batch.c). The pure-Python
 * twin in partitioner.py is the reference; tests check they agree. */
#ifndef KVLOG_MURMUR2_H
#define KVLOG_MURMUR2_H
#include <stdint.h>

static inline int32_t kafka_murmur2(const unsigned char *data, Py_ssize_t length)
{
    const uint32_t m = 0x5bd1e995u;
    const int r = 24;
    uint32_t h = 0x9747b28cu ^ (uint32_t)length;
    Py_ssize_t length4 = length / 4;
    for (Py_ssize_t i = 0; i < length4; i++) {
        const Py_ssize_t i4 = i * 4;
        uint32_t k = (uint32_t)data[i4] | ((uint32_t)data[i4 + 1] << 8)
                   | ((uint32_t)data[i4 + 2] << 16) | ((uint32_t)data[i4 + 3] << 24);
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (length % 4) {
    case 3: h ^= (uint32_t)data[(length & ~3) + 2] << 16; /* fall through */
    case 2: h ^= (uint32_t)data[(length & ~3) + 1] << 8;  /* fall through */
    case 1: h ^= (uint32_t)data[length & ~3];
            h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}

/* Kafka's partition for a keyed record: (murmur2(key) & 0x7fffffff) % n. */
static inline long kafka_partition(const unsigned char *key, Py_ssize_t len, long n)
{
    return (long)((uint32_t)kafka_murmur2(key, len) & 0x7fffffffu) % n;
}
#endif
