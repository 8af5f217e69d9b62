/* A libpq client for pgring's integration tests (tests/integration/test_libpq.py).
 *
 *   libpq_client "host=127.0.0.1 port=6432 dbname=pgring_test user=postgres"
 *
 * Connects and exercises, in order: a simple query, PQexecParams, PQprepare + PQexecPrepared
 * (a named statement used twice: session pooling keeps it), pipeline mode (three queries and one
 * Sync, then a pipeline whose second query fails so the third is aborted, then a query after the
 * pipeline). Prints "ok" and exits 0 when everything answered as expected; otherwise prints what
 * went wrong and exits 1.
 *
 *   libpq_client CONNINFO transaction
 *
 * The same without named prepared statements (transaction pooling cannot keep those yet), plus
 * pipelines that matter to a transaction pooler (tests/integration/test_transaction_pool.py):
 * several Syncs sent before any result is read, with an error in the middle one; a Flush
 * without Sync whose result is read before the rest of the pipeline is sent (the server must
 * stay linked: same pg_backend_pid); and an explicit transaction spread over several Syncs read
 * one at a time (same backend throughout, an error aborts it, ROLLBACK ends it).
 */
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static PGconn* conn;

static void die(const char* fmt, ...) {
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
static void expect_value(PGresult* res, const char* what, const char* want) {
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

static void expect_status(PGresult* res, const char* what, ExecStatusType want) {
  if (res == NULL) die("%s: no result (expected %s)", what, PQresStatus(want));
  if (PQresultStatus(res) != want) {
    die("%s: expected %s, got %s: %s", what, PQresStatus(want), PQresStatus(PQresultStatus(res)),
        PQresultErrorMessage(res));
  }
  PQclear(res);
}

/* In pipeline mode each query's results end with a NULL from PQgetResult. */
static void expect_end_of_query(const char* what) {
  PGresult* res = PQgetResult(conn);
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
  const char* values[2] = {"20", "22"};
  expect_value(PQexecParams(conn, "SELECT $1::int + $2::int", 2, NULL, values, NULL, NULL, 0),
               "PQexecParams", "42");
  const char* null_value[1] = {NULL};
  PGresult* res = PQexecParams(conn, "SELECT $1::text IS NULL", 1, NULL, null_value, NULL, NULL, 0);
  expect_value(res, "PQexecParams with NULL", "t");
}

static void prepared(void) {
  expect_status(PQprepare(conn, "pgring_libpq_stmt", "SELECT $1::text || '-' || $2::text", 2, NULL),
                "PQprepare", PGRES_COMMAND_OK);
  const char* a[2] = {"a", "b"};
  expect_value(PQexecPrepared(conn, "pgring_libpq_stmt", 2, a, NULL, NULL, 0), "PQexecPrepared #1",
               "a-b");
  const char* b[2] = {"c", "d"};
  expect_value(PQexecPrepared(conn, "pgring_libpq_stmt", 2, b, NULL, NULL, 0), "PQexecPrepared #2",
               "c-d");
  PGresult* desc = PQdescribePrepared(conn, "pgring_libpq_stmt");
  if (desc == NULL || PQresultStatus(desc) != PGRES_COMMAND_OK || PQnparams(desc) != 2) {
    die("PQdescribePrepared: unexpected result");
  }
  PQclear(desc);
  expect_status(PQexec(conn, "DEALLOCATE pgring_libpq_stmt"), "DEALLOCATE", PGRES_COMMAND_OK);
}

static void pipeline(void) {
  if (PQenterPipelineMode(conn) != 1) die("PQenterPipelineMode failed");

  /* Three queries, one Sync. */
  const char* inputs[3] = {"1", "2", "3"};
  for (int i = 0; i < 3; i++) {
    const char* v[1] = {inputs[i]};
    if (PQsendQueryParams(conn, "SELECT $1::int * 2", 1, NULL, v, NULL, NULL, 0) != 1) {
      die("PQsendQueryParams #%d failed", i + 1);
    }
  }
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync failed");
  const char* expected[3] = {"2", "4", "6"};
  for (int i = 0; i < 3; i++) {
    expect_value(PQgetResult(conn), "pipeline query", expected[i]);
    expect_end_of_query("pipeline query");
  }
  expect_status(PQgetResult(conn), "pipeline sync", PGRES_PIPELINE_SYNC);

  /* An error in the middle: the server skips to the Sync, the third query is aborted. */
  const char* one[1] = {"1"};
  const char* zero[1] = {"0"};
  if (PQsendQueryParams(conn, "SELECT $1::int", 1, NULL, one, NULL, NULL, 0) != 1 ||
      PQsendQueryParams(conn, "SELECT 1 / $1::int", 1, NULL, zero, NULL, NULL, 0) != 1 ||
      PQsendQueryParams(conn, "SELECT $1::int", 1, NULL, one, NULL, NULL, 0) != 1 ||
      PQpipelineSync(conn) != 1) {
    die("sending the failing pipeline failed");
  }
  expect_value(PQgetResult(conn), "pipeline before the error", "1");
  expect_end_of_query("pipeline before the error");
  PGresult* res = PQgetResult(conn);
  if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR) {
    die("pipeline: expected division by zero, got %s",
        res ? PQresStatus(PQresultStatus(res)) : "no result");
  }
  const char* sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
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

/* Sends one query with PQsendQueryParams (extended protocol, unnamed statement) or dies. */
static void send_query(const char* sql, const char* what) {
  if (PQsendQueryParams(conn, sql, 0, NULL, NULL, NULL, NULL, 0) != 1) die("%s: send failed", what);
}

/* The single value of the next pipeline result (a copy the caller frees), then the end of it. */
static char* next_value(const char* what) {
  PGresult* res = PQgetResult(conn);
  if (res == NULL) die("%s: no result", what);
  if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) != 1) {
    die("%s: expected one value, got %s (%d rows): %s", what, PQresStatus(PQresultStatus(res)),
        PQntuples(res), PQresultErrorMessage(res));
  }
  char* value = strdup(PQgetvalue(res, 0, 0));
  if (value == NULL) die("out of memory");
  PQclear(res);
  expect_end_of_query(what);
  return value;
}

static void expect_error_result(const char* what, const char* want_sqlstate) {
  PGresult* res = PQgetResult(conn);
  if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR) {
    die("%s: expected an error %s, got %s", what, want_sqlstate,
        res ? PQresStatus(PQresultStatus(res)) : "no result");
  }
  const char* sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  if (sqlstate == NULL || strcmp(sqlstate, want_sqlstate) != 0) {
    die("%s: expected SQLSTATE %s, got %s: %s", what, want_sqlstate, sqlstate ? sqlstate : "none",
        PQresultErrorMessage(res));
  }
  PQclear(res);
  expect_end_of_query(what);
}

/* want < 0: do not check the transaction status (libpq reports PQTRANS_ACTIVE while later
 * segments of the pipeline are still outstanding). */
static void expect_sync(const char* what, int want) {
  expect_status(PQgetResult(conn), what, PGRES_PIPELINE_SYNC);
  if (want >= 0 && (int)PQtransactionStatus(conn) != want) {
    die("%s: transaction status %d, expected %d", what, (int)PQtransactionStatus(conn), want);
  }
}

static void expect_same(const char* a, const char* b, const char* what) {
  if (strcmp(a, b) != 0) die("%s: backend pid changed from %s to %s", what, a, b);
}

/* Three Syncs sent before reading anything; the middle segment fails, the others do not. */
static void pipeline_multi_sync(void) {
  if (PQenterPipelineMode(conn) != 1) die("PQenterPipelineMode failed");
  send_query("SELECT 'first'", "multi-sync #1");
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync #1 failed");
  send_query("SELECT 1/0", "multi-sync #2");
  send_query("SELECT 'skipped'", "multi-sync #2b");
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync #2 failed");
  send_query("SELECT 'third'", "multi-sync #3");
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync #3 failed");

  char* v = next_value("multi-sync first segment");
  if (strcmp(v, "first") != 0) die("multi-sync first segment: got '%s'", v);
  free(v);
  expect_sync("multi-sync sync #1", -1);
  expect_error_result("multi-sync second segment", "22012");
  expect_status(PQgetResult(conn), "multi-sync aborted query", PGRES_PIPELINE_ABORTED);
  expect_end_of_query("multi-sync aborted query");
  expect_sync("multi-sync sync #2", -1);
  v = next_value("multi-sync third segment");
  if (strcmp(v, "third") != 0) die("multi-sync third segment: got '%s'", v);
  free(v);
  expect_sync("multi-sync sync #3", PQTRANS_IDLE);
  if (PQexitPipelineMode(conn) != 1) die("PQexitPipelineMode failed (multi-sync)");
}

/* A Flush without Sync: the result comes back, but the server must stay linked until the Sync
 * (the unnamed portal and the implicit transaction live on it). */
static void pipeline_flush(void) {
  if (PQenterPipelineMode(conn) != 1) die("PQenterPipelineMode failed");
  send_query("SELECT pg_backend_pid()", "flush #1");
  if (PQsendFlushRequest(conn) != 1 || PQflush(conn) != 0) die("PQsendFlushRequest failed");
  char* pid1 = next_value("flush: result before the Sync");
  usleep(300 * 1000); /* other clients get every chance to take a wrongly released server */
  send_query("SELECT pg_backend_pid()", "flush #2");
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync failed (flush)");
  char* pid2 = next_value("flush: result after the Sync");
  expect_sync("flush: sync", PQTRANS_IDLE);
  expect_same(pid1, pid2, "flush without sync");
  free(pid1);
  free(pid2);
  if (PQexitPipelineMode(conn) != 1) die("PQexitPipelineMode failed (flush)");
}

/* An explicit transaction over several Syncs, each read before the next is sent. */
static void pipeline_transaction(void) {
  if (PQenterPipelineMode(conn) != 1) die("PQenterPipelineMode failed");
  send_query("BEGIN", "txn BEGIN");
  send_query("SELECT pg_backend_pid()", "txn pid #1");
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync failed (txn #1)");
  expect_status(PQgetResult(conn), "txn BEGIN", PGRES_COMMAND_OK);
  expect_end_of_query("txn BEGIN");
  char* pid1 = next_value("txn pid #1");
  expect_sync("txn sync #1", PQTRANS_INTRANS);
  usleep(300 * 1000);

  send_query("SELECT pg_backend_pid()", "txn pid #2");
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync failed (txn #2)");
  char* pid2 = next_value("txn pid #2");
  expect_sync("txn sync #2", PQTRANS_INTRANS);
  expect_same(pid1, pid2, "inside a pipelined transaction");
  usleep(300 * 1000);

  send_query("SELECT 1/0", "txn error");
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync failed (txn #3)");
  expect_error_result("txn error", "22012");
  expect_sync("txn sync #3", PQTRANS_INERROR);
  usleep(300 * 1000);

  send_query("SELECT 1", "txn aborted");
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync failed (txn #4)");
  expect_error_result("query in the aborted transaction", "25P02");
  expect_sync("txn sync #4", PQTRANS_INERROR);

  send_query("ROLLBACK", "txn ROLLBACK");
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync failed (txn #5)");
  expect_status(PQgetResult(conn), "txn ROLLBACK", PGRES_COMMAND_OK);
  expect_end_of_query("txn ROLLBACK");
  expect_sync("txn sync #5", PQTRANS_IDLE);
  free(pid1);
  free(pid2);
  if (PQexitPipelineMode(conn) != 1) die("PQexitPipelineMode failed (txn)");
  expect_value(PQexec(conn, "SELECT 'after txn pipeline'"), "query after the txn pipeline",
               "after txn pipeline");
}

int main(int argc, char** argv) {
  if (argc != 2 && !(argc == 3 && strcmp(argv[2], "transaction") == 0)) {
    fprintf(stderr, "usage: %s CONNINFO [transaction]\n", argv[0]);
    return 2;
  }
  const int transaction_mode = argc == 3;
  conn = PQconnectdb(argv[1]);
  if (PQstatus(conn) != CONNECTION_OK) die("connection failed");

  simple_query();
  exec_params();
  if (transaction_mode) {
    pipeline();
    pipeline_multi_sync();
    pipeline_flush();
    pipeline_transaction();
  } else {
    prepared();
    pipeline();
  }

  if (PQtransactionStatus(conn) != PQTRANS_IDLE) die("session not idle at the end");
  PQfinish(conn);
  printf("ok\n");
  return 0;
}
