// Service worker: keeps the app shell so the installed app opens at once. API answers (your
// profile and chats) are never cached: they always come from the server on this device.
'use strict';
const CACHE = 'fints-edge-shell-v1';
const SHELL = ['./', 'index.html', 'app.js', 'style.css', 'manifest.webmanifest',
               'icons/icon.svg', 'icons/icon-192.png', 'icons/icon-512.png'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()));
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  const api = url.pathname.startsWith('/v1/') || url.pathname === '/health';
  if (event.request.method !== 'GET' || api || url.origin !== self.location.origin) return;
  // Network first (a new server version shows at once), the cached shell when it is down.
  event.respondWith(
    fetch(event.request)
      .then((res) => {
        if (res.ok) {
          const copy = res.clone();
          caches.open(CACHE).then((c) => c.put(event.request, copy));
        }
        return res;
      })
      .catch(() => caches.match(event.request).then((hit) => hit || caches.match('./'))));
});
