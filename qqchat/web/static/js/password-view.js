// The change-password dialog (a native <dialog>: focus stays inside, Escape closes it).

import { h, setText } from "./dom.js";
import { t } from "./i18n.js";

export class PasswordDialog {
  /**
   * @param {import("./session.js").Session} session
   * @param {{toast: (s: string) => void, errorText: (e: any) => string}} app
   */
  constructor(session, app) {
    this.session = session;
    this.app = app;
    this.old = h("input", { id: "pw-old", type: "password", autocomplete: "current-password" });
    this.new = h("input", { id: "pw-new", type: "password", autocomplete: "new-password" });
    this.oldLabel = h("label", { htmlFor: "pw-old" });
    this.newLabel = h("label", { htmlFor: "pw-new" });
    this.title = h("h2", { id: "pw-title" });
    this.error = h("p", { class: "form-error", attrs: { role: "alert" } });
    this.submit = h("button", { type: "submit", class: "primary" });
    this.cancel = h("button", { type: "button", on: { click: () => this.el.close() } });
    this.form = h("form", { on: { submit: (ev) => { ev.preventDefault(); this.change(); } } },
      this.title,
      h("div", { class: "field" }, this.oldLabel, this.old),
      h("div", { class: "field" }, this.newLabel, this.new),
      this.error,
      h("div", { class: "buttons" }, this.submit, this.cancel));
    this.el = h("dialog", { class: "dialog", attrs: { "aria-labelledby": "pw-title" } }, this.form);
  }

  render() {
    setText(this.title, t("changePassword"));
    setText(this.oldLabel, t("currentPassword"));
    setText(this.newLabel, t("newPassword"));
    setText(this.submit, t("changePassword"));
    setText(this.cancel, t("cancel"));
  }

  open() {
    this.render();
    this.old.value = this.new.value = "";
    setText(this.error, "");
    this.el.showModal();
    this.old.focus();
  }

  async change() {
    setText(this.error, "");
    try {
      await this.session.changePassword(this.old.value, this.new.value);
      this.el.close();
      this.app.toast(t("passwordChanged"));
    } catch (err) {
      setText(this.error, err.code === "bad_credentials" ? t("err_wrong_old") : this.app.errorText(err));
    }
  }
}
