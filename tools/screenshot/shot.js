// Screenshot a web page with headless Chromium from the npm registry (no browser download needed):
//   npm install --prefix /tmp/chrome @sparticuz/chromium puppeteer-core
//   NODE_PATH=/tmp/chrome/node_modules node tools/screenshot/shot.js URL OUT.png [WIDTH HEIGHT WAIT_MS]
// tools/screenshot/tensorboard.sh uses it for docs/tensorboard.png.
const chromium = require("@sparticuz/chromium");
const puppeteer = require("puppeteer-core");

(async () => {
  const [url, out, w, h, wait] = process.argv.slice(2);
  const browser = await puppeteer.launch({
    args: chromium.args, executablePath: await chromium.executablePath(), headless: true,
    defaultViewport: {width: +w || 1400, height: +h || 900},
  });
  const page = await browser.newPage();
  await page.goto(url, {waitUntil: "networkidle0", timeout: 60000});
  await new Promise((r) => setTimeout(r, +wait || 4000));  // charts draw after the data arrives
  await page.screenshot({path: out});
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
