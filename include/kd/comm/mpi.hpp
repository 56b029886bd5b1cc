// kd::mpi_communicator: the communicator of kd::vocab_parallel_divergence (kd/vocab_parallel.hpp) over MPI (Open MPI
// from Debian: openmpi-bin, libopenmpi-dev; CMake: find_package(MPI) and link MPI::MPI_CXX). Include it only in
// translation units that use MPI; kd's other headers never include <mpi.h>.
//
//   kd::mpi_communicator comm{MPI_COMM_WORLD};       // or a sub-communicator: the ranks that share one row's vocabulary
//   kd::vocab_parallel_divergence(d, student_shard, teacher_shard, options, result, outputs, comm);
//
// Each call is one MPI_Allreduce (MPI_IN_PLACE, MPI_DOUBLE / MPI_FLOAT, MPI_MAX / MPI_SUM) on the communicator, split
// into pieces of at most INT_MAX elements. MPI errors follow the communicator's error handler (MPI_ERRORS_ARE_FATAL by
// default: the job aborts with MPI's message).
#pragma once

#include <mpi.h>

#include <climits>
#include <cstdint>

#include "../version.hpp"

KD_BEGIN_NAMESPACE

struct mpi_communicator {
  MPI_Comm comm = MPI_COMM_WORLD;

  void all_reduce_max(double* data, std::int64_t n) const { reduce(data, n, MPI_DOUBLE, MPI_MAX); }
  void all_reduce_sum(double* data, std::int64_t n) const { reduce(data, n, MPI_DOUBLE, MPI_SUM); }
  void all_reduce_max(float* data, std::int64_t n) const { reduce(data, n, MPI_FLOAT, MPI_MAX); }
  void all_reduce_sum(float* data, std::int64_t n) const { reduce(data, n, MPI_FLOAT, MPI_SUM); }

 private:
  template <class T>
  void reduce(T* data, std::int64_t n, MPI_Datatype type, MPI_Op op) const {
    while (n > 0) {
      const int m = n > INT_MAX ? INT_MAX : static_cast<int>(n);
      MPI_Allreduce(MPI_IN_PLACE, data, m, type, op, comm);
      data += m;
      n -= m;
    }
  }
};

KD_END_NAMESPACE
