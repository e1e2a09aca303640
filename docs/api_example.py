import robaudit

model = robaudit.load_model()          # the embedded sample LeNet; or a path: robaudit.load_model("model.pt")
data = robaudit.load_data(limit=100)   # float32 tensors in [0,1]: data.x (100, 1, 28, 28), data.y (100,)

report = robaudit.audit(model, data, analyses=["norms", "layers"], norms={"top_k": 3})
print(report.metrics["norms.spectral.mean"], report.metrics["lipschitz_upper"])
report.show()                          # the CLI's tables
gate = report.gate(fail_above={"lipschitz_upper": 1e6}, fail_below={"certified_accuracy@0.01": 0.05})
print("gate passed" if gate["passed"] else "gate failed")
report.to_json("report.json")          # the same JSON as `robaudit audit -o`
report.to_html("report.html")          # one self-contained page

# The main numbers directly, for any nn.Module mapping pixels in [0,1] to logits:
x, y = data
norms = robaudit.jacobian_norms(model.module, x[:8], method="exact")
print(norms.spectral)                  # σ_max of the Jacobian, per sample
print(robaudit.layer_bounds(model)["lipschitz_upper"])
print(robaudit.lipschitz_bracket(model, data))   # Bracket(lower=..., upper=...)
