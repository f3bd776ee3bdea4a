// Drives the chat widget in headless Debian chromium (playwright-core, no
// browser download) for conformance/test_websocket_browser.py:
//   node drive.js <widget URL> <chromium executable> [short]
// Prints one JSON object with what the page showed; the pytest judges it.
// Steps: chat once through the real form; send and drop the connection in
// the same tick (the ack can never arrive on that socket, so the widget must
// resend and the server must deduplicate); type while disconnected; reload
// the tab; chat again; open a second tab, whose widget joins the same
// conversation and shows the next reply too.
'use strict';
const { chromium } = require('playwright-core');

const [url, exe, mode] = process.argv.slice(2);   // mode "short": load, chat once; "refused": expect a fatal close
const STEP_MS = 15000;

async function main() {
  const browser = await chromium.launch({ executablePath: exe, args: ['--no-sandbox'] });
  const errors = [];
  const steps = [];
  try {
    // One context: its pages share localStorage (the anonymous conversation)
    // like the tabs of one browser, each with its own sessionStorage.
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (e) => errors.push('pageerror: ' + e.message));
    page.on('console', (m) => { if (m.type() === 'error') errors.push('console: ' + m.text()); });
    page.on('response', (r) => { if (r.status() >= 400) errors.push(r.status() + ' ' + r.url()); });
    const welcomes = () => page.evaluate(() => window.kfgWidget.state().stats.welcomes);
    const waitWelcomes = (n, pg = page) => pg.waitForFunction(
      (k) => window.kfgWidget && window.kfgWidget.state().connected &&
             window.kfgWidget.state().stats.welcomes >= k, n, { timeout: STEP_MS });
    const waitEcho = (text, pg = page) => pg.waitForFunction(
      (t) => [...document.querySelectorAll('#kfg-log li.kfg-in .kfg-text')]
        .some((e) => e.textContent === 'echo: ' + t), text, { timeout: STEP_MS });
    const linesOf = (pg) => pg.evaluate(() =>
      [...document.querySelectorAll('#kfg-log li')].map((li) => ({
        cls: li.className, text: li.querySelector('.kfg-text').textContent,
        state: (li.querySelector('.kfg-state') || { textContent: null }).textContent,
      })));
    const waitAcked = () => page.waitForFunction(
      () => window.kfgWidget.state().pending.length === 0, null, { timeout: STEP_MS });
    const typeAndSend = async (text) => {
      await page.fill('#kfg-input', '');
      await page.type('#kfg-input', text);
      await page.keyboard.press('Enter');
    };

    const resp = await page.goto(url);
    steps.push({ step: 'load', status: resp.status(), ctype: resp.headers()['content-type'] });
    if (mode === 'refused') {
      // A refusal that no retry can fix: the widget says why and stops.
      await page.waitForFunction(() => /^disconnected/.test(
        document.getElementById('kfg-status').textContent), null, { timeout: STEP_MS });
      await page.waitForTimeout(1500);      // would be several reconnects if it retried
      console.log(JSON.stringify({ ok: true, steps, errors,
        status: await page.textContent('#kfg-status'),
        inputDisabled: await page.isDisabled('#kfg-input'),
        state: await page.evaluate(() => window.kfgWidget.state()) }));
      return;
    }
    await waitWelcomes(1);

    await typeAndSend('hello one');
    await waitEcho('hello one');
    await waitAcked();
    steps.push({ step: 'first echo' });
    if (mode === 'short') {
      console.log(JSON.stringify({ ok: true, steps, errors, lines: await linesOf(page),
                                   state: await page.evaluate(() => window.kfgWidget.state()) }));
      return;
    }

    // In flight when the socket goes: the ack is lost with it.
    const before = await welcomes();
    await page.evaluate(() => { window.kfgWidget.send('hello two'); window.kfgWidget.dropConnection(); });
    await waitWelcomes(before + 1);
    await waitEcho('hello two');
    await waitAcked();
    steps.push({ step: 'echo after drop' });

    // Typed while there is no connection: queued, sent after the welcome.
    const before2 = await welcomes();
    await page.evaluate(() => window.kfgWidget.dropConnection());
    await page.waitForFunction(() => !window.kfgWidget.state().connected, null, { timeout: STEP_MS });
    await typeAndSend('hello three');
    await waitWelcomes(before2 + 1);
    await waitEcho('hello three');
    await waitAcked();
    steps.push({ step: 'echo of a message typed offline',
                 stats: await page.evaluate(() => window.kfgWidget.state().stats) });

    // A reload keeps the transcript and the position (sessionStorage).
    await page.reload();
    await waitWelcomes(1);
    await typeAndSend('hello four');
    await waitEcho('hello four');
    await waitAcked();
    steps.push({ step: 'echo after reload' });

    // A second tab joins the same conversation: a reply reaches both.
    const tab2 = await context.newPage();
    tab2.on('pageerror', (e) => errors.push('tab2 pageerror: ' + e.message));
    await tab2.goto(url);
    await waitWelcomes(1, tab2);
    await typeAndSend('hello five');
    await waitEcho('hello five');
    await waitEcho('hello five', tab2);
    await waitAcked();
    steps.push({ step: 'echo in both tabs', tab2: await linesOf(tab2),
                 tab2conv: await tab2.evaluate(() => window.kfgWidget.state().conversation) });

    const shown = await page.evaluate(() => ({
      state: window.kfgWidget.state(),
      status: document.getElementById('kfg-status').textContent,
    }));
    shown.lines = await linesOf(page);
    console.log(JSON.stringify({ ok: true, steps, errors, ...shown }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, steps, errors, failure: String(e && e.message || e) }));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main();
