/* A libpq client for pgring's integration tests (tests/integration/test_libpq.py).
 *
 *   libpq_client "host=127.0.0.1 port=6432 dbname=pgring_test user=postgres"
 *
 * Connects and exercises, in order: a simple query, PQexecParams, PQprepare + PQexecPrepared
 * (a named statement used twice: session pooling keeps it), pipeline mode (three queries and one
 * Sync, then a pipeline whose second query fails so the third is aborted, then a query after the
 * pipeline). Prints "ok" and exits 0 when everything answered as expected; otherwise prints what
 * went wrong and exits 1.
 */
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static PGconn *conn;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("libpq_client: ", stdout);
  vprintf(fmt, ap);
  va_end(ap);
  if (conn != NULL) {
    printf("\nlibpq_client: connection error: %s", PQerrorMessage(conn));
    PQfinish(conn);
  }
  printf("\n");
  exit(1);
}

/* Checks that res is a one-row, one-column result equal to want, then frees it. */
static void expect_value(PGresult *res, const char *what, const char *want) {
  if (res == NULL) die("%s: no result", what);
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    die("%s: status %s: %s", what, PQresStatus(PQresultStatus(res)), PQresultErrorMessage(res));
  }
  if (PQntuples(res) != 1 || PQnfields(res) != 1) {
    die("%s: expected 1 row x 1 column, got %d x %d", what, PQntuples(res), PQnfields(res));
  }
  if (strcmp(PQgetvalue(res, 0, 0), want) != 0) {
    die("%s: expected '%s', got '%s'", what, want, PQgetvalue(res, 0, 0));
  }
  PQclear(res);
}

static void expect_status(PGresult *res, const char *what, ExecStatusType want) {
  if (res == NULL) die("%s: no result (expected %s)", what, PQresStatus(want));
  if (PQresultStatus(res) != want) {
    die("%s: expected %s, got %s: %s", what, PQresStatus(want),
        PQresStatus(PQresultStatus(res)), PQresultErrorMessage(res));
  }
  PQclear(res);
}

/* In pipeline mode each query's results end with a NULL from PQgetResult. */
static void expect_end_of_query(const char *what) {
  PGresult *res = PQgetResult(conn);
  if (res != NULL) {
    die("%s: expected the end of the query's results, got %s", what,
        PQresStatus(PQresultStatus(res)));
  }
}

static void simple_query(void) {
  expect_value(PQexec(conn, "SELECT 1"), "simple query", "1");
  /* Several statements in one Query message: the last result is returned. */
  expect_value(PQexec(conn, "SELECT 1; SELECT 'two'"), "multi-statement query", "two");
}

static void exec_params(void) {
  const char *values[2] = {"20", "22"};
  expect_value(PQexecParams(conn, "SELECT $1::int + $2::int", 2, NULL, values, NULL, NULL, 0),
               "PQexecParams", "42");
  const char *null_value[1] = {NULL};
  PGresult *res = PQexecParams(conn, "SELECT $1::text IS NULL", 1, NULL, null_value, NULL, NULL, 0);
  expect_value(res, "PQexecParams with NULL", "t");
}

static void prepared(void) {
  expect_status(PQprepare(conn, "pgring_libpq_stmt", "SELECT $1::text || '-' || $2::text", 2, NULL),
                "PQprepare", PGRES_COMMAND_OK);
  const char *a[2] = {"a", "b"};
  expect_value(PQexecPrepared(conn, "pgring_libpq_stmt", 2, a, NULL, NULL, 0),
               "PQexecPrepared #1", "a-b");
  const char *b[2] = {"c", "d"};
  expect_value(PQexecPrepared(conn, "pgring_libpq_stmt", 2, b, NULL, NULL, 0),
               "PQexecPrepared #2", "c-d");
  PGresult *desc = PQdescribePrepared(conn, "pgring_libpq_stmt");
  if (desc == NULL || PQresultStatus(desc) != PGRES_COMMAND_OK || PQnparams(desc) != 2) {
    die("PQdescribePrepared: unexpected result");
  }
  PQclear(desc);
  expect_status(PQexec(conn, "DEALLOCATE pgring_libpq_stmt"), "DEALLOCATE", PGRES_COMMAND_OK);
}

static void pipeline(void) {
  if (PQenterPipelineMode(conn) != 1) die("PQenterPipelineMode failed");

  /* Three queries, one Sync. */
  const char *inputs[3] = {"1", "2", "3"};
  for (int i = 0; i < 3; i++) {
    const char *v[1] = {inputs[i]};
    if (PQsendQueryParams(conn, "SELECT $1::int * 2", 1, NULL, v, NULL, NULL, 0) != 1) {
      die("PQsendQueryParams #%d failed", i + 1);
    }
  }
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync failed");
  const char *expected[3] = {"2", "4", "6"};
  for (int i = 0; i < 3; i++) {
    expect_value(PQgetResult(conn), "pipeline query", expected[i]);
    expect_end_of_query("pipeline query");
  }
  expect_status(PQgetResult(conn), "pipeline sync", PGRES_PIPELINE_SYNC);

  /* An error in the middle: the server skips to the Sync, the third query is aborted. */
  const char *one[1] = {"1"};
  const char *zero[1] = {"0"};
  if (PQsendQueryParams(conn, "SELECT $1::int", 1, NULL, one, NULL, NULL, 0) != 1 ||
      PQsendQueryParams(conn, "SELECT 1 / $1::int", 1, NULL, zero, NULL, NULL, 0) != 1 ||
      PQsendQueryParams(conn, "SELECT $1::int", 1, NULL, one, NULL, NULL, 0) != 1 ||
      PQpipelineSync(conn) != 1) {
    die("sending the failing pipeline failed");
  }
  expect_value(PQgetResult(conn), "pipeline before the error", "1");
  expect_end_of_query("pipeline before the error");
  PGresult *res = PQgetResult(conn);
  if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR) {
    die("pipeline: expected division by zero, got %s",
        res ? PQresStatus(PQresultStatus(res)) : "no result");
  }
  const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  if (sqlstate == NULL || strcmp(sqlstate, "22012") != 0) {
    die("pipeline: expected SQLSTATE 22012, got %s", sqlstate ? sqlstate : "none");
  }
  PQclear(res);
  expect_end_of_query("pipeline error");
  expect_status(PQgetResult(conn), "pipeline after the error", PGRES_PIPELINE_ABORTED);
  expect_end_of_query("aborted pipeline query");
  expect_status(PQgetResult(conn), "pipeline sync after the error", PGRES_PIPELINE_SYNC);

  if (PQexitPipelineMode(conn) != 1) die("PQexitPipelineMode failed");
  expect_value(PQexec(conn, "SELECT 'after pipeline'"), "query after the pipeline",
               "after pipeline");
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CONNINFO\n", argv[0]);
    return 2;
  }
  conn = PQconnectdb(argv[1]);
  if (PQstatus(conn) != CONNECTION_OK) die("connection failed");

  simple_query();
  exec_params();
  prepared();
  pipeline();

  if (PQtransactionStatus(conn) != PQTRANS_IDLE) die("session not idle at the end");
  PQfinish(conn);
  printf("ok\n");
  return 0;
}
