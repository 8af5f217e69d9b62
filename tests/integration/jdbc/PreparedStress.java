// JDBC through pgring in transaction mode (tests/integration/test_statement_cache.py).
//
//   java -cp .:postgresql.jar PreparedStress JDBC_URL USER CONNECTIONS USES
//
// CONNECTIONS threads, each with its own connection (default prepareThreshold=5: from the
// fifth execution on, pgjdbc uses named server-side statements S_1, S_2, ...; every connection
// numbers its own, so the same names stand for different texts in different connections). Each
// runs USES rounds of: a SELECT whose parameters and result identify the round, a statement
// whose text is the connection's own, an INSERT; every third round inside a transaction,
// committed or rolled back. Checks every result, then its committed rows. Prints
// "connection N committed M" per connection and "ok", or the failures.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

public class PreparedStress {
  static void check(boolean ok, String what) {
    if (!ok) throw new IllegalStateException(what);
  }

  static String run(String url, String user, int id, int uses) throws SQLException {
    Properties props = new Properties();
    props.setProperty("user", user);
    int committed = 0;
    try (Connection conn = DriverManager.getConnection(url, props);
         PreparedStatement sel = conn.prepareStatement(
             "SELECT ?::int AS conn, ?::int AS round, 'c' || ?::text AS label");
         PreparedStatement mine = conn.prepareStatement("SELECT " + id + " * 1000 + ?::int");
         PreparedStatement ins = conn.prepareStatement("INSERT INTO stmt_jdbc (conn, i) VALUES (?, ?)");
         PreparedStatement count = conn.prepareStatement("SELECT count(*) FROM stmt_jdbc WHERE conn = ?")) {
      for (int i = 0; i < uses; i++) {
        boolean tx = i % 3 == 2;
        boolean commit = i % 2 == 0;
        if (tx) conn.setAutoCommit(false);
        sel.setInt(1, id);
        sel.setInt(2, i);
        sel.setString(3, id + "-" + i);
        try (ResultSet rs = sel.executeQuery()) {
          check(rs.next(), "round " + i + ": no row");
          check(rs.getInt(1) == id && rs.getInt(2) == i && rs.getString(3).equals("c" + id + "-" + i),
                "round " + i + ": got " + rs.getInt(1) + "/" + rs.getInt(2) + "/" + rs.getString(3));
          check(!rs.next(), "round " + i + ": more than one row");
        }
        mine.setInt(1, i);
        try (ResultSet rs = mine.executeQuery()) {
          check(rs.next() && rs.getInt(1) == id * 1000 + i, "round " + i + ": the connection's own statement");
        }
        ins.setInt(1, id);
        ins.setInt(2, i);
        check(ins.executeUpdate() == 1, "round " + i + ": INSERT count");
        if (tx) {
          if (commit) conn.commit();
          else conn.rollback();
          conn.setAutoCommit(true);
        }
        if (!tx || commit) committed++;
      }
      count.setInt(1, id);
      try (ResultSet rs = count.executeQuery()) {
        check(rs.next() && rs.getInt(1) == committed,
              "committed rows: " + rs.getInt(1) + ", expected " + committed);
      }
      check(sel.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(),
            "the SELECT was never server-prepared (prepareThreshold)");
    }
    return "connection " + id + " committed " + committed;
  }

  public static void main(String[] args) throws Exception {
    String url = args[0];
    String user = args[1];
    int connections = Integer.parseInt(args[2]);
    int uses = Integer.parseInt(args[3]);
    ExecutorService pool = Executors.newFixedThreadPool(connections);
    List<Future<String>> results = new ArrayList<>();
    for (int c = 0; c < connections; c++) {
      final int id = c;
      results.add(pool.submit(() -> run(url, user, id, uses)));
    }
    int failures = 0;
    for (int c = 0; c < connections; c++) {
      String r;
      try {
        r = results.get(c).get(100, TimeUnit.SECONDS);
      } catch (ExecutionException e) {
        r = "connection " + c + " failed: " + e.getCause();
        failures++;
      }
      System.out.println(r);
    }
    pool.shutdownNow();
    System.out.println(failures == 0 ? "ok" : "failures: " + failures);
    System.exit(failures == 0 ? 0 : 1);
  }
}
