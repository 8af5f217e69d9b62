# ruby-pg (Debian's ruby-pg) through pgring: CLIENTS threads, each with its own connection,
# preparing named statements once (PG::Connection#prepare) and running them with
# exec_prepared in and out of transactions; in transaction mode the statements are used on
# servers other than the one they were prepared on. Prints one JSON line of results a direct
# connection must give too.
#   ruby ruby_pg_workload.rb PORT USER PASSWORD DATABASE TABLE
require "pg"
require "json"

port, user, password, database, table = ARGV
CLIENTS = 6
ROUNDS = 30

def connect(port, user, password, database)
  PG.connect(host: "127.0.0.1", port: port.to_i, user: user, password: password, dbname: database)
end

threads = (0...CLIENTS).map do |c|
  Thread.new do
    conn = connect(port, user, password, database)
    conn.prepare("double", "SELECT $1::int * 2 AS x, $2::text AS t")
    conn.prepare("insert", "INSERT INTO #{table} (id, v) VALUES ($1, $2)")
    conn.prepare("count", "SELECT count(*) AS n FROM #{table} WHERE id / 1000 = $1")
    doubled = 0
    counted = 0
    ROUNDS.times do |i|
      r = conn.exec_prepared("double", [i, "c#{c}"])
      raise "double #{i}: #{r.to_a}" unless r[0]["x"].to_i == 2 * i && r[0]["t"] == "c#{c}"
      doubled += r[0]["x"].to_i
      conn.transaction do
        conn.exec_prepared("insert", [c * 1000 + i, "c#{c}-#{i}"])
        n = conn.exec_prepared("count", [c])[0]["n"].to_i
        raise "count #{i}: #{n}" unless n == i + 1
        counted += n
      end
    end
    # The same name prepared again: PostgreSQL says 42P05, the session's statement stays.
    again = begin
      conn.prepare("double", "SELECT 1")
      ""
    rescue PG::Error => e
      e.result.error_field(PG::Result::PG_DIAG_SQLSTATE)
    end
    still = conn.exec_prepared("double", [21, "x"])[0]["x"].to_i
    conn.exec("DEALLOCATE double")
    gone = begin
      conn.exec_prepared("double", [1, "x"])
      ""
    rescue PG::Error => e
      e.result.error_field(PG::Result::PG_DIAG_SQLSTATE)
    end
    conn.close
    { "doubled" => doubled, "counted" => counted, "again" => again, "still" => still,
      "gone" => gone }
  end
end
results = threads.map(&:value)
conn = connect(port, user, password, database)
row = conn.exec("SELECT count(*) AS n, sum(id) AS s FROM #{table}")[0]
conn.close
puts JSON.generate({ "results" => results, "rows" => { "n" => row["n"].to_i, "s" => row["s"].to_i } })
