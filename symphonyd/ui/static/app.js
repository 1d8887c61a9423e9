// The app shell: sign-in, hash routing (#/images, #/deployments/ID, ...), and the live
// feed that refreshes the page shown when a table it draws changes.
import { api, session, ApiError } from "./api.js";
import { EventFeed } from "./events.js";
import { PAGES } from "./pages.js";

const $ = (id) => document.getElementById(id);
let current = null; // { page, args, refresh }
let timer = null;
let pollTimer = null;

function live(state, delay) {
  const box = $("live");
  if (state === "up") {
    if (!box.hidden) { box.textContent = "connected again"; box.className = "ok"; setTimeout(() => { box.hidden = true; }, 1500); }
  } else {
    box.hidden = false; box.className = "";
    box.textContent = `disconnected from the node, reconnecting (next try in ${Math.round(delay / 100) / 10} s)`;
  }
}

const feed = new EventFeed({
  onChange(name) {
    const table = name.split(".")[0];
    if (current && current.page.tables.includes(table)) schedule();
  },
  onState(state, delay) { live(state, delay); if (state === "up") schedule(); },
  onReset() { schedule(); },
});

// A refresh that fails (the node went away) says why in the page's error line; the next
// event or poll tries again.
async function refresh() {
  if (!current) return;
  const box = document.querySelector("#page [role=alert]");
  try {
    await current.refresh();
    if (box && box.dataset.refresh) { box.textContent = ""; delete box.dataset.refresh; }
  } catch (exc) {
    if (box) { box.textContent = exc.message; box.dataset.refresh = "1"; }
  }
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(refresh, 150);
}

async function show() {
  const [, name = "", ...args] = location.hash.replace(/^#/, "").split("/");
  const page = PAGES[name] || PAGES[""];
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.getAttribute("href") === `#/${name}`);
  }
  const container = $("page");
  container.replaceChildren();
  clearInterval(pollTimer);
  if (current && current.leave) current.leave();
  current = { page, args, ...page.mount(container, args.map(decodeURIComponent)) };
  await refresh();
  if (page.poll) pollTimer = setInterval(refresh, page.poll);
}

async function signIn(token) {
  session.token = token;
  try {
    session.whoami = await api("GET", "/v1/whoami");
  } catch (exc) {
    session.token = null;
    throw exc;
  }
  const who = session.whoami;
  $("who").textContent = `${who.description || who.id || who.kind} (${who.scope})`;
  document.body.classList.toggle("reader", session.reader);
  $("signin").hidden = true; $("nav").hidden = false; $("signout").hidden = false;
  const status = await api("GET", "/v1/cluster");
  feed.start(status.revision);
  await show();
}

function signOut() {
  feed.stop(); session.token = null; session.whoami = null;
  $("page").replaceChildren(); $("nav").hidden = true; $("signout").hidden = true; $("who").textContent = "";
  $("live").hidden = true; $("signin").hidden = false; $("token").value = ""; $("token").focus();
}

$("signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-error").textContent = "";
  try { await signIn($("token").value.trim()); } catch (exc) {
    $("signin-error").textContent = exc instanceof ApiError ? exc.message : String(exc);
  }
});
$("signout").addEventListener("click", signOut);
window.addEventListener("hashchange", () => { if (session.whoami) show(); });

if (session.token) signIn(session.token).catch(() => signOut()); else signOut();
