// node-postgres (npm "pg") through pgring: CLIENTS connections at once, each preparing named
// statements once (pg sends Parse with the name the first time, then only Bind/Execute on its
// connection: in transaction mode those land on other servers) and running them in and out of
// transactions. Prints one JSON line of results a direct connection must give too.
//   node node_pg_workload.js PORT USER PASSWORD DATABASE TABLE
const { Client } = require("pg");

const [port, user, password, database, table] = process.argv.slice(2);
const CLIENTS = 6, ROUNDS = 30;

async function worker(c) {
  const client = new Client({ host: "127.0.0.1", port: Number(port), user, password, database });
  await client.connect();
  let doubled = 0, counted = 0;
  for (let i = 0; i < ROUNDS; i++) {
    const r = await client.query({ name: "double", text: "SELECT $1::int * 2 AS x, $2::text AS t",
                                   values: [i, `c${c}`] });
    if (r.rows[0].x !== 2 * i || r.rows[0].t !== `c${c}`) throw new Error(`double ${i}: ${JSON.stringify(r.rows)}`);
    doubled += r.rows[0].x;
    await client.query("BEGIN");
    await client.query({ name: "insert", text: `INSERT INTO ${table} (id, v) VALUES ($1, $2)`,
                         values: [c * 1000 + i, `c${c}-${i}`] });
    const n = await client.query({ name: "count", text: `SELECT count(*)::int AS n FROM ${table} WHERE id / 1000 = $1`,
                                   values: [c] });
    if (n.rows[0].n !== i + 1) throw new Error(`count ${i}: ${n.rows[0].n}`);
    counted += n.rows[0].n;
    await client.query(i % 5 === 4 ? "ROLLBACK" : "COMMIT");
    if (i % 5 === 4)
      await client.query({ name: "insert", text: `INSERT INTO ${table} (id, v) VALUES ($1, $2)`,
                           values: [c * 1000 + i, `c${c}-${i}`] });
  }
  // A named statement whose Parse fails, then the same name prepared correctly.
  let failed = "";
  try {
    await client.query({ name: "broken", text: "SELECT nonexistent_column_x FROM pg_class" });
  } catch (e) {
    failed = e.code;
  }
  const ok = await client.query({ name: "fixed", text: "SELECT relname FROM pg_class WHERE relname = $1",
                                  values: [table] });
  await client.end();
  return { doubled, counted, failed, fixed: ok.rows.length };
}

(async () => {
  const results = await Promise.all([...Array(CLIENTS).keys()].map(worker));
  const check = new Client({ host: "127.0.0.1", port: Number(port), user, password, database });
  await check.connect();
  const rows = await check.query(`SELECT count(*)::int AS n, sum(id)::int AS s FROM ${table}`);
  await check.end();
  console.log(JSON.stringify({ results, rows: rows.rows[0] }));
})().catch((e) => {
  console.error(`node-postgres workload failed: ${e.stack || e}`);
  process.exit(1);
});
