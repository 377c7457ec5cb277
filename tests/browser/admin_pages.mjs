// Driver for tests/it/admin_pages.rs: headless Chromium logs into turnd's admin pages (with
// the token in the login form, or by opening a one-time link) and then either runs the
// self-test page (clicks "Run", waits for every transport's row) or watches the status page
// until it shows sessions and a plot. Writes a screenshot and prints one JSON object.
//
// usage: node admin_pages.mjs '<json>' with {mode: "selftest"|"status", base, token?, link?,
//        chromium, screenshot, spki?, minSessions?}
import { chromium } from "playwright-core";

const opts = JSON.parse(process.argv[2] || "{}");
const LIMIT_MS = 150_000;

async function login(page) {
  if (opts.link) {
    await page.goto(opts.link);
  } else {
    await page.goto(`${opts.base}/login`);
    await page.fill("#token", opts.token);
    await page.evaluate((next) => { document.getElementById("next").value = next; }, `/${opts.mode}`);
    await page.click("#login button[type=submit]");
  }
  await page.waitForURL(`${opts.base}/${opts.mode}`, { timeout: 20_000 });
}

async function selftest(page) {
  await page.click("#run");
  await page.waitForFunction(() => window.turndSelftest && window.turndSelftest.state === "done",
    null, { timeout: LIMIT_MS, polling: 250 });
  const result = await page.evaluate(() => window.turndSelftest);
  result.rows = await page.$$eval("#results tbody tr", (trs) =>
    trs.map((tr) => ({ transport: tr.dataset.transport, connected: tr.dataset.connected,
                       text: tr.innerText })));
  return result;
}

async function status(page) {
  const want = opts.minSessions || 1;
  await page.waitForFunction((want) => {
    const s = window.turndStatus;
    // Two updates at least: the sessions' bandwidth is the difference between two.
    return s && s.updates >= 2 && s.sessions >= want && s.plot.bandwidthPoints >= 2 && s.plot.maxBps > 0;
  }, want, { timeout: 60_000, polling: 500 });
  const result = await page.evaluate(() => window.turndStatus);
  result.rows = await page.$$eval("#sessions tbody tr[data-id]", (trs) => trs.map((tr) => tr.innerText));
  result.plotSeries = await page.$$eval("#plot polyline", (ps) =>
    ps.map((p) => ({ series: p.dataset.series, points: p.getAttribute("points").trim().split(/\s+/).filter(Boolean).length })));
  result.nodesShown = await page.$eval("#nodes-section", (s) => !s.hidden);
  return result;
}

let browser;
let out;
try {
  const args = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
  ];
  // Trust the test's TLS certificate by its key, as an operator's browser trusts a real one;
  // a certificate with another key (the wrong-name one) stays untrusted.
  if (opts.spki) args.push(`--ignore-certificate-errors-spki-list=${opts.spki}`);
  browser = await chromium.launch({ executablePath: opts.chromium, headless: true, timeout: 60_000, args });
  const page = await browser.newPage({ viewport: opts.mode === "status" ? { width: 420, height: 900 } : { width: 1280, height: 900 } });
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e}`));
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await login(page);
  out = opts.mode === "selftest" ? await selftest(page) : await status(page);
  await page.screenshot({ path: opts.screenshot, fullPage: true });
  out.cookies = (await page.context().cookies()).map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite }));
  out.requests = requests;
  out.console = consoleLines;
  out.browserVersion = browser.version();
} catch (err) {
  out = { driverError: `${err && err.stack ? err.stack : err}` };
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
