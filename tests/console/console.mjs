// Drives the unitable web console in headless Chromium and prints, as one JSON object on
// stdout, what each page showed: tests/python/test_console.py starts the server, makes the
// data, runs this and compares every number with the gRPC API and PyIceberg.
//
// Environment: CONSOLE_URL (http://HOST:PORT), CHROMIUM (the browser binary), SHOTS_DIR
// (screenshots go there), ADMIN_TOKEN, READER_TOKEN (read on one table), NOGRANT_TOKEN (no
// grant), TABLES (comma-separated names to open), SQL (a query to run).
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const url = env("CONSOLE_URL");
const shots = env("SHOTS_DIR");
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  args: ["--headless", "--no-sandbox"],
});
const out = { console_errors: [], expected_errors: [], pages: {} };

// A fresh browser context per user (own session storage), collecting console errors; an
// error is expected only while `expecting` is set (a refused login, a refused page).
async function session(label) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const state = { expecting: null };
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const entry = { session: label, url: page.url(), text: msg.text() };
    if (state.expecting && msg.text().includes(state.expecting)) out.expected_errors.push(entry);
    else out.console_errors.push(entry);
  });
  page.on("pageerror", (err) => out.console_errors.push({ session: label, url: page.url(), text: String(err) }));
  return { context, page, state };
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, name + ".png"), fullPage: true });
}

async function login(page, token) {
  await page.goto(url + "/console/");
  await page.waitForSelector("#login");
  await page.fill("#token", token);
  await page.click("#login-submit");
}

const textOf = (page, selector) => page.locator(selector).first().textContent();

async function tableRows(page) {
  return page.$$eval("#tables tbody tr", (rows) => rows.map((r) => {
    const f = (name) => r.querySelector(`[data-field="${name}"]`)?.textContent ?? null;
    return {
      table: r.getAttribute("data-table"),
      columns: f("columns"),
      primary_key: f("primary_key"),
      rows: f("rows"),
      current_snapshot_id: f("current_snapshot_id"),
      lag_records: f("lag_records"),
    };
  }));
}

async function tablePage(page, name) {
  await page.goto(url + "/console/#/table/" + encodeURIComponent(name));
  // The previous page's heading may still be up: wait for this table's.
  await page.waitForFunction((n) => document.querySelector("#table-name")?.textContent === n, name);
  const field = (scope, name) => textOf(page, `${scope} [data-field="${name}"]`);
  const points = () => page.$eval("#lag-chart polyline", (l) => (l.getAttribute("points") || "").split(" ").length);
  const result = {
    chart_points_at_load: await points(),
    name: await textOf(page, "#table-name"),
    snapshot_id: await field("#freshness", "snapshot_id"),
    lag_records: await field("#freshness", "lag_records"),
    heads: await field("#freshness", "heads"),
    covered: await field("#freshness", "covered"),
    snapshot_count: await field("#overview", "snapshot_count"),
    primary_key: await field("#overview", "primary_key"),
    topic: await field("#overview", "topic"),
    changelog_partitions: await field("#overview", "changelog_partitions"),
    columns: await page.$$eval("#schema tbody tr", (rows) => rows.map((r) =>
      [...r.querySelectorAll("td")].map((td) => td.textContent))),
    snapshots: await page.$$eval("#snapshot-table tbody tr", (rows) => rows.map((r) => ({
      snapshot_id: r.getAttribute("data-snapshot"),
      operation: r.querySelector('[data-field="operation"]').textContent,
      added_records: r.querySelector('[data-field="added_records"]').textContent,
      position_deletes: r.querySelector('[data-field="position_deletes"]').textContent,
      offsets: r.querySelector('[data-field="offsets"]').textContent,
    }))),
    snapshot_bars: await page.locator("#snapshot-chart rect").count(),
    compaction: {
      data_files: await field("#compaction", "data_files"),
      delete_files: await field("#compaction", "delete_files"),
      pending_tasks: await field("#compaction", "pending_tasks"),
    },
    streams: await page.$$eval("#streams tbody tr", (rows) => rows.map((r) => r.getAttribute("data-stream"))),
    groups: await page.$$eval("#groups tbody tr", (rows) => rows.map((r) => ({
      group: r.getAttribute("data-group"),
      lag_records: r.querySelector('[data-field="lag_records"]').textContent,
    }))),
    dead_letters: await page.$$eval("#dead-letter-table tbody tr", (rows) => rows.map((r) => ({
      field: r.querySelector('[data-field="field"]').textContent,
      reason: r.querySelector('[data-field="reason"]').textContent,
    }))),
    grants: await page.$$eval("#grants li", (items) => items.map((i) => i.textContent)),
  };
  // The freshness chart gets a second sample from the page's own polling.
  await page.waitForFunction(() => {
    const line = document.querySelector("#lag-chart polyline");
    return line && (line.getAttribute("points") || "").split(" ").length >= 2;
  }, null, { timeout: 10000 });
  return result;
}

// 1. Without a token: the login form, and the API refuses.
{
  const { context, page, state } = await session("anonymous");
  await page.goto(url + "/console/");
  await page.waitForSelector("#login");
  out.login_required = await page.isVisible("#token");
  out.nav_hidden = await page.locator("#nav").isHidden();
  await shot(page, "01-login");
  state.expecting = "401";
  out.api_without_token = await page.evaluate(async () => (await fetch("/api/v1/tables")).status);
  await context.close();
}

// 2. A wrong token: refused with a message.
{
  const { context, page, state } = await session("bad-token");
  state.expecting = "401";
  await login(page, "ut_000000000000_" + "0".repeat(64));
  await page.waitForSelector("#login-error");
  out.bad_token_error = await textOf(page, "#login-error");
  await shot(page, "02-bad-token");
  await context.close();
}

// 3. The admin: every table, each table's page, SQL, sign out.
{
  const { context, page, state } = await session("admin");
  await login(page, env("ADMIN_TOKEN"));
  await page.waitForSelector("#tables");
  out.admin_user = await textOf(page, "#who");
  out.admin_tables = await tableRows(page);
  await shot(page, "03-tables");
  for (const name of env("TABLES").split(",")) {
    out.pages[name] = await tablePage(page, name);
    await shot(page, "04-table-" + name);
  }
  await page.goto(url + "/console/#/sql");
  await page.waitForSelector("#sql-input");
  await page.fill("#sql-input", env("SQL"));
  await page.click("#sql-run");
  await page.waitForSelector("#sql-count, #sql-error");
  out.sql = {
    count: await page.locator("#sql-count").count() ? await textOf(page, "#sql-count") : null,
    error: await page.locator("#sql-error").count() ? await textOf(page, "#sql-error") : null,
    header: await page.$$eval("#sql-result thead th", (ths) => ths.map((t) => t.textContent)),
    rows: await page.$$eval("#sql-result tbody tr", (rows) => rows.map((r) =>
      [...r.querySelectorAll("td")].map((td) => td.textContent))),
  };
  await shot(page, "05-sql");
  // A statement that is not a query is refused, shown as an error on the page.
  state.expecting = "400";
  await page.fill("#sql-input", "DROP TABLE " + env("TABLES").split(",")[0]);
  await page.click("#sql-run");
  await page.waitForSelector("#sql-error");
  out.sql_drop_error = await textOf(page, "#sql-error");
  state.expecting = null;
  await shot(page, "06-sql-refused");
  await page.click("#logout");
  await page.waitForSelector("#login");
  out.signed_out = await page.isVisible("#token");
  await context.close();
}

// 4. A user with read on one table sees only that one.
{
  const { context, page } = await session("reader");
  await login(page, env("READER_TOKEN"));
  await page.waitForSelector("#tables");
  out.reader_user = await textOf(page, "#who");
  out.reader_tables = await tableRows(page);
  await shot(page, "07-reader-tables");
  await context.close();
}

// 5. A user without grants sees no table, and a table's page is refused.
{
  const { context, page, state } = await session("nogrant");
  await login(page, env("NOGRANT_TOKEN"));
  await page.waitForSelector("#no-tables");
  out.nogrant_tables = await page.locator("#tables tbody tr").count();
  state.expecting = "403";
  await page.goto(url + "/console/#/table/" + encodeURIComponent(env("TABLES").split(",")[0]));
  await page.waitForSelector("[data-error]");
  out.nogrant_table_error = await page.locator("[data-error]").first().getAttribute("data-error");
  out.nogrant_page_text = await page.locator("#main").textContent();
  await shot(page, "08-nogrant-refused");
  await context.close();
}

await browser.close();
process.stdout.write(JSON.stringify(out, null, 2) + "\n");
