//! Walks through the deployment lifecycle of a saved model: register
//! version 1 (deployed automatically), register version 2 and activate it
//! (deployed, switched to, version 1's deployment deleted), attach a
//! pre-existing deployment by hand, and reconcile. Every transition is
//! printed; `--plan` also prints the dry run (what would be created and
//! deleted, and the estimated hourly cost) before each billed step.
//!
//! With no settings it runs against a local fake platform and an in-memory
//! registry. With `AZURE_SUBSCRIPTION_ID`, `AZURE_RESOURCE_GROUP` and
//! `AZURE_OPENAI_ACCOUNT` (plus `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
//! `AZURE_CLIENT_SECRET`) it deploys on that Azure OpenAI resource; then
//! give `--model-v1` and `--model-v2` (fine-tuned model ids) and, to attach,
//! `--attach <DEPLOYMENT>`. With `--platform bedrock` it deploys Bedrock
//! custom models (region and credentials from the standard AWS chain):
//! `--model-v1`/`--model-v2` are custom model ARNs and `--sku` picks
//! `on-demand` (the default), `provisioned`, `provisioned-1-month` or
//! `provisioned-6-months` with `--capacity` model units.
//!
//! ```text
//! cargo run -p finetune-examples --example deploy_lifecycle -- --plan
//! ```

use std::sync::Arc;
use std::time::Duration;

use finetune_core::{AzureAuth, FineTunedModel, LossCurve, ModelArtifacts, Secret};
use finetune_deploy::testing::FakeDeployer;
use finetune_deploy::{
    ArmCredential, AzureDeployer, AzureDeployerConfig, Deployer, Lifecycle, LifecyclePolicy,
    NewVersion, PriceTable, Registry, WaitPolicy,
};
use finetune_examples::args::{Args, usage_error};

const USAGE: &str = "usage: deploy_lifecycle [--plan] [--registry DIR] [--price SKU=PER_UNIT_HOUR]
                        [--model-v1 ID --model-v2 ID] [--attach DEPLOYMENT]
                        [--platform fake|azure|bedrock] [--sku SKU] [--capacity N]
                        [--poll-interval SECS]

  --plan       print the dry run (creations, deletions, estimated cost) before each billed step
  --registry   keep the registry in DIR (default: in memory)
  --price      a price per capacity unit and hour (default: Standard=1.00, an example figure)
  --platform   where to deploy (default: $FINETUNE_DEPLOY_PLATFORM, else azure when its
               variables are set, else the fake)
  --sku        the deployment sku (Azure: Standard; Bedrock: on-demand, provisioned, ...)
  --capacity   capacity units (Azure) or model units (Bedrock provisioned throughput)
  --poll-interval SECS  how often provisioning is checked on a real platform (default 10)";

fn fine_tuned(id: &str) -> NewVersion {
    NewVersion::of(FineTunedModel {
        provider: "azure_openai".into(),
        model_id: id.into(),
        base_model: "gpt-4o-mini-2024-07-18".into(),
        job_id: None,
        created_at: chrono::Utc::now(),
        requires_deployment: true,
        artifacts: ModelArtifacts::Remote { id: id.into() },
        loss_curve: LossCurve::new(),
        metadata: Default::default(),
    })
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1)
}

fn main() {
    let args = Args::parse(
        USAGE,
        &[
            "registry",
            "price",
            "model-v1",
            "model-v2",
            "attach",
            "platform",
            "sku",
            "capacity",
            "poll-interval",
        ],
        &["plan"],
    );
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    let platform_var = var("FINETUNE_DEPLOY_PLATFORM");
    let platform = args.value("platform").or(platform_var.as_deref());
    let azure = match (
        var("AZURE_SUBSCRIPTION_ID"),
        var("AZURE_RESOURCE_GROUP"),
        var("AZURE_OPENAI_ACCOUNT"),
    ) {
        (Some(sub), Some(rg), Some(account)) if matches!(platform, None | Some("azure")) => {
            Some((sub, rg, account))
        }
        _ if platform == Some("azure") => usage_error(
            USAGE,
            "Azure needs AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZURE_OPENAI_ACCOUNT",
        ),
        _ => None,
    };
    let bedrock = match platform {
        Some("bedrock") => true,
        None | Some("azure" | "fake") => false,
        Some(other) => usage_error(USAGE, &format!("unknown platform `{other}`")),
    };
    let mut policy = LifecyclePolicy::default();
    if bedrock {
        policy.sku = "on-demand".into();
        policy.capacity = 0;
    }
    if let Some(sku) = args.value("sku") {
        policy.sku = sku.to_owned();
    }
    if let Some(c) = args.parsed::<u32>(USAGE, "capacity") {
        policy.capacity = c;
    }
    let fake = FakeDeployer::new(2);
    let (deployer, v1, v2, attach): (Arc<dyn Deployer>, String, String, Option<String>) =
        match azure {
            _ if bedrock => {
                let provider =
                    finetune_examples::block_on(finetune_providers::BedrockProvider::new(
                        finetune_providers::BedrockConfig::default(),
                    ))
                    .unwrap_or_else(|e| fail(e));
                let model = |flag: &str| {
                    args.value(flag).map(str::to_owned).unwrap_or_else(|| {
                        usage_error(USAGE, &format!("--{flag} is required with Bedrock"))
                    })
                };
                (
                    Arc::new(finetune_deploy::BedrockDeployer::new(
                        provider.control_client().clone(),
                    )),
                    model("model-v1"),
                    model("model-v2"),
                    args.value("attach").map(str::to_owned),
                )
            }
            Some((sub, rg, account)) => {
                let auth =
                    AzureAuth::ClientSecret {
                        tenant_id: var("AZURE_TENANT_ID")
                            .unwrap_or_else(|| usage_error(USAGE, "AZURE_TENANT_ID is not set")),
                        client_id: var("AZURE_CLIENT_ID")
                            .unwrap_or_else(|| usage_error(USAGE, "AZURE_CLIENT_ID is not set")),
                        client_secret: Secret::new(var("AZURE_CLIENT_SECRET").unwrap_or_else(
                            || usage_error(USAGE, "AZURE_CLIENT_SECRET is not set"),
                        )),
                    };
                let credential = match finetune_providers::AzureCredential::from_auth(&auth) {
                    Ok(finetune_providers::AzureCredential::Entra(c)) => ArmCredential::Entra(c),
                    Ok(_) => unreachable!("a client secret gives an Entra credential"),
                    Err(e) => fail(e),
                };
                let deployer =
                    AzureDeployer::new(AzureDeployerConfig::new(sub, rg, account, credential))
                        .unwrap_or_else(|e| fail(e));
                let model = |flag: &str| {
                    args.value(flag).map(str::to_owned).unwrap_or_else(|| {
                        usage_error(USAGE, &format!("--{flag} is required with Azure"))
                    })
                };
                (
                    Arc::new(deployer),
                    model("model-v1"),
                    model("model-v2"),
                    args.value("attach").map(str::to_owned),
                )
            }
            None => {
                println!(
                    "platform: a local fake (set AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZURE_OPENAI_ACCOUNT for Azure, or give --platform bedrock)"
                );
                fake.add_unmanaged("team-gpt-4o-mini", "gpt-4o-mini-2024-07-18.ft-team");
                (
                    Arc::new(fake.clone()),
                    "gpt-4o-mini-2024-07-18.ft-v1".to_owned(),
                    "gpt-4o-mini-2024-07-18.ft-v2".to_owned(),
                    Some("team-gpt-4o-mini".to_owned()),
                )
            }
        };
    let registry = match args.value("registry") {
        Some(dir) => Registry::local(dir).unwrap_or_else(|e| fail(e)),
        None => Registry::in_memory(),
    };
    let mut prices = PriceTable::default();
    match args.value("price") {
        Some(p) => {
            let (sku, price) =
                p.split_once('=').unwrap_or_else(|| usage_error(USAGE, "--price takes SKU=PRICE"));
            let price: f64 =
                price.parse().unwrap_or_else(|_| usage_error(USAGE, "--price takes SKU=PRICE"));
            prices = prices.with(sku, price);
        }
        None => prices = prices.with("Standard", 1.0),
    }
    let wait = if args.value("model-v1").is_some() {
        match args.parsed::<f64>(USAGE, "poll-interval") {
            Some(secs) if secs > 0.0 => {
                WaitPolicy { interval: Duration::from_secs_f64(secs), ..WaitPolicy::default() }
            }
            Some(_) => usage_error(USAGE, "--poll-interval must be positive"),
            None => WaitPolicy::default(),
        }
    } else {
        WaitPolicy { interval: Duration::from_millis(50), ..WaitPolicy::immediate() }
    };
    let lifecycle = Lifecycle::new(registry.clone(), deployer.clone())
        .with_wait(wait)
        .with_prices(prices)
        .with_observer(|event| println!("  {event}"));
    let plan = args.switch("plan");
    finetune_examples::block_on(async {
        let model = "support-bot";
        println!("1. saved model `{model}`: auto-deploy, delete the previous deployment");
        if registry.head(model).await.is_err() {
            lifecycle.create_model(model, policy.clone()).await.unwrap_or_else(|e| fail(e));
        }
        println!("2. register version 1");
        let first =
            lifecycle.register_version(model, fine_tuned(&v1)).await.unwrap_or_else(|e| fail(e));
        println!("3. register version 2 and activate it");
        let second =
            lifecycle.register_version(model, fine_tuned(&v2)).await.unwrap_or_else(|e| fail(e));
        if plan {
            let p =
                lifecycle.plan_activate(model, second.version).await.unwrap_or_else(|e| fail(e));
            println!("{p}");
        }
        lifecycle.activate(model, second.version).await.unwrap_or_else(|e| fail(e));
        if let Some(id) = &attach {
            println!("4. attach the pre-existing deployment {id} to version 2 by hand");
            lifecycle.attach(model, second.version, id).await.unwrap_or_else(|e| fail(e));
        }
        println!("5. reconcile");
        let report = lifecycle.reconcile(false).await.unwrap_or_else(|e| fail(e));
        println!(
            "  {} interrupted step(s) recovered, {} orphaned deployment(s), {} error(s)",
            report.recovered.len(),
            report.orphans.len(),
            report.errors.len()
        );
        let head = registry.head(model).await.unwrap_or_else(|e| fail(e));
        println!(
            "state: versions {}..={}, active version {}, served by {}",
            first.version,
            second.version,
            head.active_version.map_or("none".into(), |v| v.to_string()),
            head.active_deployment.as_deref().unwrap_or("nothing")
        );
        let live = deployer.list_managed().await.unwrap_or_else(|e| fail(e));
        println!("deployments created by this library still running: {}", live.len());
        if plan {
            let p = lifecycle.plan_activate(model, first.version).await.unwrap_or_else(|e| fail(e));
            println!("dry run of going back to version 1:\n{p}");
        }
    });
}
