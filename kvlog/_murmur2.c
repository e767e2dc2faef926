/* Kafka's murmur2 for Python (the function itself: _murmur2.h). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "_murmur2.h"

static PyObject *murmur2(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int32_t h = kafka_murmur2((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLong(h);
}

static PyObject *partition_for_key(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "partition_for_key(key, num_partitions)");
        return NULL;
    }
    long n = PyLong_AsLong(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n <= 0) {
        PyErr_SetString(PyExc_ValueError, "num_partitions must be positive");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int32_t h = kafka_murmur2((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    /* Modulo in long: truncating n to 32 bits divided by zero (SIGFPE) at n = 2**32
     * and gave wrong partitions above it. */
    return PyLong_FromLong((long)((uint32_t)h & 0x7fffffffu) % n);
}

/* Keyed records grouped by partition in one call (the producer's send_batch):
 * {partition: ([index], [key], [value])}, partition -1 for a None key. */
static PyObject *group_by_partition(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "group_by_partition(keys, values, num_partitions)");
        return NULL;
    }
    long n = PyLong_AsLong(args[2]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n <= 0) {
        PyErr_SetString(PyExc_ValueError, "num_partitions must be positive");
        return NULL;
    }
    PyObject *keys = PySequence_Fast(args[0], "keys must be a sequence");
    if (keys == NULL)
        return NULL;
    PyObject *values = PySequence_Fast(args[1], "values must be a sequence");
    if (values == NULL) {
        Py_DECREF(keys);
        return NULL;
    }
    PyObject *groups = NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(keys);
    if (PySequence_Fast_GET_SIZE(values) != count) {
        PyErr_SetString(PyExc_ValueError, "as many keys as values are needed");
        goto error;
    }
    groups = PyDict_New();
    if (groups == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = PySequence_Fast_GET_ITEM(keys, i);
        long partition = -1;
        if (key != Py_None) {
            Py_buffer view;
            if (PyObject_GetBuffer(key, &view, PyBUF_SIMPLE) < 0)
                goto error;
            int32_t h = kafka_murmur2((const unsigned char *)view.buf, view.len);
            PyBuffer_Release(&view);
            partition = (long)((uint32_t)h & 0x7fffffffu) % n;
        }
        PyObject *number = PyLong_FromLong(partition);
        if (number == NULL)
            goto error;
        PyObject *group = PyDict_GetItemWithError(groups, number); /* borrowed */
        if (group == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(number);
                goto error;
            }
            group = Py_BuildValue("([][][])");
            if (group == NULL || PyDict_SetItem(groups, number, group) < 0) {
                Py_XDECREF(group);
                Py_DECREF(number);
                goto error;
            }
            Py_DECREF(group); /* the dict holds it */
        }
        Py_DECREF(number);
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL)
            goto error;
        int failed = PyList_Append(PyTuple_GET_ITEM(group, 0), index) < 0;
        Py_DECREF(index);
        if (failed || PyList_Append(PyTuple_GET_ITEM(group, 1), key) < 0
            || PyList_Append(PyTuple_GET_ITEM(group, 2), PySequence_Fast_GET_ITEM(values, i)) < 0)
            goto error;
    }
    Py_DECREF(keys);
    Py_DECREF(values);
    return groups;
error:
    Py_XDECREF(groups);
    Py_DECREF(keys);
    Py_DECREF(values);
    return NULL;
}

static PyMethodDef methods[] = {
    {"murmur2", murmur2, METH_O, "Kafka's murmur2 of a bytes-like object (signed 32-bit)."},
    {"partition_for_key", (PyCFunction)(void (*)(void))partition_for_key, METH_FASTCALL,
     "(murmur2(key) & 0x7fffffff) % num_partitions"},
    {"group_by_partition", (PyCFunction)(void (*)(void))group_by_partition, METH_FASTCALL,
     "{partition: ([index], [key], [value])}; partition -1 for a None key"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kvlog._murmur2", NULL, -1, methods};

PyMODINIT_FUNC PyInit__murmur2(void) { return PyModule_Create(&module); }
