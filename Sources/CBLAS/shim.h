#include <cblas.h>
#include <stddef.h>

/* LAPACK routines that OpenBLAS ships (Fortran calling convention: every argument by
   pointer, the lengths of character arguments appended). Used for closed-form fits. */
/* Solves A X = B for symmetric positive definite A (Cholesky). */
void dposv_(const char *uplo, const int *n, const int *nrhs, double *a, const int *lda,
            double *b, const int *ldb, int *info, size_t uplo_len);
/* Eigenvalues (ascending) and eigenvectors of a symmetric matrix (divide and conquer). */
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
             double *w, double *work, const int *lwork, int *iwork, const int *liwork, int *info,
             size_t jobz_len, size_t uplo_len);
