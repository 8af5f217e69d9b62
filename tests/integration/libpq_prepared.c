/* Named prepared statements through a transaction-mode pool, driven by libpq
 * (tests/integration/test_statement_cache.py compiles this at run time).
 *
 *   libpq_prepared CONNINFO work WORKER ITERATIONS
 *
 * Prepares named statements once (PQprepare), then uses them ITERATIONS times, in turn:
 * outside transactions; inside BEGIN..COMMIT (an INSERT .. RETURNING into stmt_libpq, tagged
 * with WORKER); in pipeline mode (PQenterPipelineMode, several PQsendQueryPrepared and a
 * PQpipelineSync, then a second pipeline whose middle query fails so the rest of it is
 * aborted, then a third that works); inside a transaction that fails and is rolled back; and
 * now and then a statement prepared inside a pipeline (PQsendPrepare), used there, and
 * deallocated with DEALLOCATE. "q_mine" has the same name in every worker but its own text, so
 * a worker that got another worker's statement sees the wrong number. Every result is checked.
 * Prints "ok committed=N" (the rows this worker committed) and exits 0, or prints what went
 * wrong and exits 1.
 *
 *   libpq_prepared CONNINFO ddl TABLE STOPFILE
 *
 * Prepares "sel_all" = SELECT * FROM TABLE and runs it with PQexecPrepared (outside any
 * transaction) every few milliseconds while another session adds columns to TABLE. Every
 * execution must succeed, and the number of columns may only grow. Once STOPFILE exists, runs it
 * once more and prints "ok execs=N columns=C" (C: the columns of that last result).
 */
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static PGconn* conn;
static int worker;

static void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("libpq_prepared[%d]: ", worker);
  vprintf(fmt, ap);
  va_end(ap);
  if (conn != NULL) {
    printf("\nlibpq_prepared[%d]: connection error: %s", worker, PQerrorMessage(conn));
    PQfinish(conn);
  }
  printf("\n");
  fflush(stdout);
  exit(1);
}

static void check_status(PGresult* res, ExecStatusType want, const char* what) {
  if (res == NULL) die("%s: no result (expected %s)", what, PQresStatus(want));
  if (PQresultStatus(res) != want) {
    const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    die("%s: expected %s, got %s (SQLSTATE %s): %s", what, PQresStatus(want),
        PQresStatus(PQresultStatus(res)), state ? state : "-", PQresultErrorMessage(res));
  }
}

static void command_ok(PGresult* res, const char* what) {
  check_status(res, PGRES_COMMAND_OK, what);
  PQclear(res);
}

/* A one-row result whose columns are the strings in want (NULL ends the list); frees it. */
static void check_row(PGresult* res, const char* what, const char* const* want) {
  check_status(res, PGRES_TUPLES_OK, what);
  int n = 0;
  while (want[n] != NULL) n++;
  if (PQntuples(res) != 1 || PQnfields(res) != n) {
    die("%s: expected 1 row x %d columns, got %d x %d", what, n, PQntuples(res), PQnfields(res));
  }
  for (int i = 0; i < n; i++) {
    if (strcmp(PQgetvalue(res, 0, i), want[i]) != 0) {
      die("%s: column %d is '%s', expected '%s'", what, i + 1, PQgetvalue(res, 0, i), want[i]);
    }
  }
  PQclear(res);
}

static void check_error(PGresult* res, const char* sqlstate, const char* what) {
  check_status(res, PGRES_FATAL_ERROR, what);
  const char* got = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  if (got == NULL || strcmp(got, sqlstate) != 0) {
    die("%s: expected SQLSTATE %s, got %s: %s", what, sqlstate, got ? got : "none",
        PQresultErrorMessage(res));
  }
  PQclear(res);
}

/* In pipeline mode every query's results end with a NULL. */
static void end_of_query(const char* what) {
  PGresult* res = PQgetResult(conn);
  if (res != NULL)
    die("%s: expected the end of the query, got %s", what, PQresStatus(PQresultStatus(res)));
}

static char bufs[8][32];
static const char* num(int slot, long v) {
  snprintf(bufs[slot], sizeof bufs[slot], "%ld", v);
  return bufs[slot];
}

/* q_sel(worker, i) -> worker, i, 'w<worker>-<i>' */
static void send_sel(int i) {
  const char* p[2] = {num(0, worker), num(1, i)};
  if (PQsendQueryPrepared(conn, "q_sel", 2, p, NULL, NULL, 0) != 1) die("send q_sel");
}
static void check_sel(PGresult* res, int i, const char* what) {
  char label[64];
  snprintf(label, sizeof label, "w%d-%d", worker, i);
  const char* want[] = {num(2, worker), num(3, i), label, NULL};
  check_row(res, what, want);
}
static void exec_sel(int i) {
  const char* p[2] = {num(0, worker), num(1, i)};
  check_sel(PQexecPrepared(conn, "q_sel", 2, p, NULL, NULL, 0), i, "q_sel");
}

/* q_mine(i) -> worker * 100000 + i (each worker has its own text under this name) */
static void check_mine(PGresult* res, int i, const char* what) {
  const char* want[] = {num(4, (long)worker * 100000 + i), NULL};
  check_row(res, what, want);
}
static void exec_mine(int i) {
  const char* p[1] = {num(0, i)};
  check_mine(PQexecPrepared(conn, "q_mine", 1, p, NULL, NULL, 0), i, "q_mine");
}
static void send_mine(int i) {
  const char* p[1] = {num(0, i)};
  if (PQsendQueryPrepared(conn, "q_mine", 1, p, NULL, NULL, 0) != 1) die("send q_mine");
}

static void exec_ins(int i) {
  const char* p[2] = {num(0, worker), num(1, i)};
  const char* want[] = {num(2, worker), num(3, i), NULL};
  check_row(PQexecPrepared(conn, "q_ins", 2, p, NULL, NULL, 0), "q_ins", want);
}

static void pipeline(int i, int* committed) {
  if (PQenterPipelineMode(conn) != 1) die("PQenterPipelineMode");
  /* 1: selects and an INSERT (committed at the Sync: an implicit transaction). */
  for (int k = 0; k < 6; k++) {
    if (k % 2 == 0)
      send_sel(i * 10 + k);
    else
      send_mine(i * 10 + k);
  }
  const char* ins[2] = {num(0, worker), num(1, i)};
  if (PQsendQueryPrepared(conn, "q_ins", 2, ins, NULL, NULL, 0) != 1) die("send q_ins");
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync 1");
  /* 2: an error in the middle: the rest up to the Sync is aborted. */
  const char* zero[1] = {"0"};
  send_mine(i);
  if (PQsendQueryPrepared(conn, "q_div", 1, zero, NULL, NULL, 0) != 1) die("send q_div");
  send_sel(i);
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync 2");
  /* 3: works again. */
  send_sel(i + 1);
  send_mine(i + 1);
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync 3");

  for (int k = 0; k < 6; k++) {
    if (k % 2 == 0)
      check_sel(PQgetResult(conn), i * 10 + k, "pipeline 1 q_sel");
    else
      check_mine(PQgetResult(conn), i * 10 + k, "pipeline 1 q_mine");
    end_of_query("pipeline 1");
  }
  const char* want_ins[] = {num(2, worker), num(3, i), NULL};
  check_row(PQgetResult(conn), "pipeline 1 q_ins", want_ins);
  end_of_query("pipeline 1 q_ins");
  (*committed)++;
  PGresult* res = PQgetResult(conn);
  check_status(res, PGRES_PIPELINE_SYNC, "pipeline 1 sync");
  PQclear(res);

  check_mine(PQgetResult(conn), i, "pipeline 2 q_mine");
  end_of_query("pipeline 2 q_mine");
  check_error(PQgetResult(conn), "22012", "pipeline 2 q_div");
  end_of_query("pipeline 2 q_div");
  res = PQgetResult(conn);
  check_status(res, PGRES_PIPELINE_ABORTED, "pipeline 2 after the error");
  PQclear(res);
  end_of_query("pipeline 2 aborted");
  res = PQgetResult(conn);
  check_status(res, PGRES_PIPELINE_SYNC, "pipeline 2 sync");
  PQclear(res);

  check_sel(PQgetResult(conn), i + 1, "pipeline 3 q_sel");
  end_of_query("pipeline 3 q_sel");
  check_mine(PQgetResult(conn), i + 1, "pipeline 3 q_mine");
  end_of_query("pipeline 3 q_mine");
  res = PQgetResult(conn);
  check_status(res, PGRES_PIPELINE_SYNC, "pipeline 3 sync");
  PQclear(res);
  if (PQexitPipelineMode(conn) != 1) die("PQexitPipelineMode");
}

/* A statement prepared inside a pipeline, used there and in the next transaction, deallocated. */
static void prepare_in_pipeline(int i) {
  char name[32], sql[64], dealloc[64];
  snprintf(name, sizeof name, "q_new_%d", i);
  snprintf(sql, sizeof sql, "SELECT $1::int + %d", worker * 1000);
  if (PQenterPipelineMode(conn) != 1) die("PQenterPipelineMode");
  if (PQsendPrepare(conn, name, sql, 1, NULL) != 1) die("PQsendPrepare");
  const char* p[1] = {num(0, i)};
  if (PQsendQueryPrepared(conn, name, 1, p, NULL, NULL, 0) != 1) die("send %s", name);
  if (PQpipelineSync(conn) != 1) die("PQpipelineSync");
  PGresult* res = PQgetResult(conn);
  check_status(res, PGRES_COMMAND_OK, "PQsendPrepare in a pipeline");
  PQclear(res);
  end_of_query("PQsendPrepare");
  const char* want[] = {num(5, worker * 1000 + i), NULL};
  check_row(PQgetResult(conn), "statement prepared in the pipeline", want);
  end_of_query("statement prepared in the pipeline");
  res = PQgetResult(conn);
  check_status(res, PGRES_PIPELINE_SYNC, "pipeline sync");
  PQclear(res);
  if (PQexitPipelineMode(conn) != 1) die("PQexitPipelineMode");
  check_row(PQexecPrepared(conn, name, 1, p, NULL, NULL, 0),
            "statement prepared in a pipeline, reused", want);
  snprintf(dealloc, sizeof dealloc, "DEALLOCATE %s", name);
  command_ok(PQexec(conn, dealloc), "DEALLOCATE");
  check_error(PQexecPrepared(conn, name, 1, p, NULL, NULL, 0), "26000", "deallocated statement");
}

static int work(int iterations) {
  int committed = 0;
  command_ok(
      PQprepare(
          conn, "q_sel",
          "SELECT $1::int AS worker, $2::int AS i, 'w' || $1::text || '-' || $2::text AS label", 2,
          NULL),
      "PQprepare q_sel");
  command_ok(
      PQprepare(conn, "q_ins",
                "INSERT INTO stmt_libpq (worker, i) VALUES ($1, $2) RETURNING worker, i", 2, NULL),
      "PQprepare q_ins");
  char mine[64];
  snprintf(mine, sizeof mine, "SELECT %d * 100000 + $1::int", worker);
  command_ok(PQprepare(conn, "q_mine", mine, 1, NULL), "PQprepare q_mine");
  command_ok(PQprepare(conn, "q_div", "SELECT 100 / $1::int", 1, NULL), "PQprepare q_div");
  /* Preparing a name again is an error (42P05), and the session goes on. */
  check_error(PQprepare(conn, "q_sel", "SELECT 1", 0, NULL), "42P05",
              "PQprepare of an existing name");

  PGresult* desc = PQdescribePrepared(conn, "q_sel");
  check_status(desc, PGRES_COMMAND_OK, "PQdescribePrepared");
  if (PQnparams(desc) != 2 || PQnfields(desc) != 3 || strcmp(PQfname(desc, 2), "label") != 0) {
    die("PQdescribePrepared q_sel: %d params, %d fields", PQnparams(desc), PQnfields(desc));
  }
  PQclear(desc);

  for (int i = 0; i < iterations; i++) {
    switch (i % 4) {
      case 0:
        exec_sel(i);
        exec_mine(i);
        break;
      case 1:
        command_ok(PQexec(conn, "BEGIN"), "BEGIN");
        exec_ins(i);
        exec_mine(i);
        exec_sel(i);
        command_ok(PQexec(conn, "COMMIT"), "COMMIT");
        committed++;
        break;
      case 2:
        pipeline(i, &committed);
        break;
      case 3: {
        command_ok(PQexec(conn, "BEGIN"), "BEGIN");
        exec_ins(i);
        const char* zero[1] = {"0"};
        check_error(PQexecPrepared(conn, "q_div", 1, zero, NULL, NULL, 0), "22012",
                    "q_div in a transaction");
        const char* sel[2] = {num(0, worker), num(1, i)};
        check_error(PQexecPrepared(conn, "q_sel", 2, sel, NULL, NULL, 0), "25P02",
                    "q_sel in a failed transaction");
        command_ok(PQexec(conn, "ROLLBACK"), "ROLLBACK");
        exec_mine(i);
        break;
      }
    }
    if (i % 10 == 5) prepare_in_pipeline(i);
  }
  printf("ok committed=%d\n", committed);
  return 0;
}

static int ddl(const char* table, const char* stopfile) {
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT * FROM %s", table);
  command_ok(PQprepare(conn, "sel_all", sql, 0, NULL), "PQprepare sel_all");
  int last = 0, execs = 0, stopping = 0;
  for (;;) {
    if (!stopping && access(stopfile, F_OK) == 0) stopping = 1;
    PGresult* res = PQexecPrepared(conn, "sel_all", 0, NULL, NULL, NULL, 0);
    check_status(res, PGRES_TUPLES_OK, "PQexecPrepared sel_all");
    int n = PQnfields(res);
    PQclear(res);
    if (n < last) die("execution %d: %d columns after %d", execs + 1, n, last);
    last = n;
    execs++;
    if (stopping) break;
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  printf("ok execs=%d columns=%d\n", execs, last);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: libpq_prepared CONNINFO work WORKER ITERATIONS | ddl TABLE STOPFILE\n");
    return 2;
  }
  if (strcmp(argv[2], "work") == 0 && argc == 5) worker = atoi(argv[3]);
  conn = PQconnectdb(argv[1]);
  if (PQstatus(conn) != CONNECTION_OK) die("connection failed");
  int rc;
  if (strcmp(argv[2], "work") == 0 && argc == 5) {
    rc = work(atoi(argv[4]));
  } else if (strcmp(argv[2], "ddl") == 0 && argc == 5) {
    rc = ddl(argv[3], argv[4]);
  } else {
    fprintf(stderr, "usage: libpq_prepared CONNINFO work WORKER ITERATIONS | ddl TABLE STOPFILE\n");
    rc = 2;
  }
  PQfinish(conn);
  return rc;
}
