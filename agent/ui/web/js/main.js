/* nodescope web UI: start-up. In a bundle's offline index.html the data document is
 * inlined (#ns-bundle-data) and only the incident reader runs, with no request at all;
 * served by the agent, the pages are routed by the URL's hash (#/node, #/network,
 * #/profiles?pid=1234&seconds=10, #/incidents/<id>). */
(function () {
  'use strict';
  const NS = window.NS;


  function bundleMode(el) {
    const main = NS.main();
    let data;
    try {
      data = JSON.parse(el.textContent);
    } catch (e) {
      main.appendChild(NS.errorBox('The bundle\'s data document is not valid JSON: ' + e.message));
      return;
    }
    NS.bundle = data;
    const m = data.manifest || {};
    const node = document.getElementById('ns-node');
    if (node) node.textContent = 'incident bundle (offline)' + (m.node ? ' · ' + m.node : '');
    // The bundle's members sit next to index.html once the archive is unpacked.
    NS.renderIncident(main, data, { files: (f) => f });
    document.title = 'nodescope incident' + (m.node ? ' · ' + m.node : '');
  }

  async function liveMode() {
    const main = NS.main();
    NS.mark('ns-start');
    try {
      NS.env = await NS.api.json('/ui/env.json');
    } catch (e) {
      main.appendChild(NS.errorBox(e));
      return;
    }
    const node = document.getElementById('ns-node');
    if (node) node.textContent = (NS.env.node || '') + ' · nodescope ' + NS.env.version;
    let first = true;
    async function show() {
      const r = NS.route();
      if (!NS.pages[r.page]) {
        history.replaceState(null, '', '#/node');
        r.page = 'node';
      }
      NS.leave();
      NS.clear(main);
      for (const a of document.querySelectorAll('nav a[data-page]')) {
        if (a.dataset.page === r.page) a.setAttribute('aria-current', 'page');
        else a.removeAttribute('aria-current');
      }
      document.title = 'nodescope · ' + r.page + (NS.env.node ? ' · ' + NS.env.node : '');
      if (!first) main.focus({ preventScroll: true });
      first = false;
      main.dataset.page = r.page;
      main.dataset.ready = 'false';
      try {
        await NS.pages[r.page](main, r);
      } catch (e) {
        console.warn('page failed', e);
        main.appendChild(NS.errorBox(e));
      }
      // Tests and scripts wait for this.
      if (main.dataset.page === r.page) main.dataset.ready = 'true';
    }
    window.addEventListener('hashchange', show);
    show();
  }

  function start() {
    const data = document.getElementById('ns-bundle-data');
    if (data) bundleMode(data);
    else liveMode();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
