// Shows the text a SmoothVideo node returns in its "ui" (scores, tuning summary) on the node itself.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "SmoothVideo.ShowText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("SmoothVideo_")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text?.join("\n");
      if (!text) return;
      let widget = this.widgets?.find((w) => w.name === "smoothvideo_result");
      if (!widget) {
        widget = app.widgets.STRING(this, "smoothvideo_result", ["STRING", { multiline: true }], app).widget;
        widget.inputEl.readOnly = true;
        widget.serialize = false;
      }
      widget.value = text;
      this.setDirtyCanvas(true, true);
    };
  },
});
