// The log in / register screen.

import { h, setText } from "./dom.js";
import { t } from "./i18n.js";

/**
 * Words for a failed login or registration.
 * @param {{code?: string, frame?: any, message?: string}} err
 */
export function loginError(err) {
  const code = err.code ?? "disconnected";
  if (code === "rate_limited") {
    const s = Math.max(1, Math.ceil(Number(err.frame?.retry_after ?? 1)));
    return t("err_rate_limited", { s });
  }
  const known = ["name_taken", "weak_password", "bad_credentials", "bad_name", "already_online",
    "account_disabled", "forbidden", "disconnected"];
  if (known.includes(code)) return t(`err_${code}`);
  return t("err_generic", { message: err.message || code });
}

export class LoginView {
  /**
   * @param {import("./session.js").Session} session
   * @param {() => void} onLanguage
   */
  constructor(session, onLanguage) {
    this.session = session;
    this.busy = false;
    this.name = h("input", {
      id: "login-name", type: "text", autocomplete: "username", required: true,
      attrs: { autocapitalize: "off", spellcheck: "false" },
    });
    this.password = h("input", {
      id: "login-password", type: "password", autocomplete: "current-password", required: true,
    });
    this.remember = h("input", { id: "login-remember", type: "checkbox" });
    this.error = h("p", { class: "form-error", attrs: { role: "alert" } });
    this.info = h("p", { class: "form-info", attrs: { role: "status" } });
    this.nameLabel = h("label", { htmlFor: "login-name" });
    this.passwordLabel = h("label", { htmlFor: "login-password" });
    this.rememberLabel = h("label", { htmlFor: "login-remember" });
    this.loginButton = h("button", { type: "submit", class: "primary" });
    this.registerButton = h("button", { type: "button", on: { click: () => this.submit(true) } });
    this.langButton = h("button", { type: "button", class: "link lang", on: { click: onLanguage } });
    this.title = h("h1", { class: "brand" });
    this.form = h("form", {
      class: "login-card", noValidate: true,
      on: { submit: (ev) => { ev.preventDefault(); this.submit(false); } },
    },
    h("div", { class: "login-top" }, this.title, this.langButton),
    h("div", { class: "field" }, this.nameLabel, this.name),
    h("div", { class: "field" }, this.passwordLabel, this.password),
    h("div", { class: "check" }, this.remember, this.rememberLabel),
    this.error, this.info,
    h("div", { class: "buttons" }, this.loginButton, this.registerButton));
    this.el = h("main", { class: "login-screen" }, this.form);
  }

  render() {
    setText(this.title, t("appName"));
    setText(this.nameLabel, t("name"));
    setText(this.passwordLabel, t("password"));
    setText(this.rememberLabel, t("remember"));
    setText(this.loginButton, t("login"));
    setText(this.registerButton, t("register"));
    setText(this.langButton, t("language"));
    this.langButton.lang = t("language") === "中文" ? "zh" : "en";
    this.langButton.setAttribute("aria-label", `${t("languageLabel")}: ${t("language")}`);
  }

  focus() {
    (this.name.value ? this.password : this.name).focus();
  }

  /** Shown above the form, e.g. after a session expired. */
  say(text) {
    setText(this.info, text);
  }

  /** An error shown in the form's alert, e.g. the account was disabled. */
  fail(text) {
    setText(this.info, "");
    setText(this.error, text);
  }

  async submit(register) {
    if (this.busy) return;
    const name = this.name.value.trim();
    const password = this.password.value;
    setText(this.error, "");
    setText(this.info, "");
    if (!name || !password) {
      setText(this.error, t("err_empty"));
      return;
    }
    askNotifications(); // a click is the moment a browser lets a page ask
    this.busy = true;
    this.loginButton.disabled = this.registerButton.disabled = true;
    try {
      if (register) {
        await this.session.register(name, password);
        setText(this.info, t("registered", { name }));
      }
      await this.session.login(name, password, this.remember.checked);
      this.password.value = "";
      setText(this.info, "");
    } catch (err) {
      setText(this.error, loginError(err));
      this.password.focus();
    } finally {
      this.busy = false;
      this.loginButton.disabled = this.registerButton.disabled = false;
    }
  }
}

function askNotifications() {
  if ("Notification" in window && Notification.permission === "default") {
    Notification.requestPermission().catch(() => {});
  }
}
