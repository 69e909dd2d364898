"""Wording of the synthetic market's texts: headline and body templates, by hidden sentiment.

Sentiment levels are -1, -0.5, 0, 0.5, 1 (strongly negative .. strongly positive). Placeholders:
{name} company, {code} six-digit code, {sector} industry, {pct} {pct2} percentages, {amt} CNY
amounts in 100 millions, {q} reporting period, {broker}, {target} target price, {n} a count,
{region}, {product}, and verb pools {up}/{down} whose strength matches the level.
"""

from __future__ import annotations

SENTIMENTS = (-1.0, -0.5, 0.0, 0.5, 1.0)

# (third person, base form) pairs, by strength.
UP_VERBS = {
    1.0: (("soars", "soar"), ("surges", "surge"), ("jumps", "jump"), ("leaps", "leap"), ("skyrockets", "skyrocket")),
    0.5: (("rises", "rise"), ("grows", "grow"), ("edges up", "edge up"), ("climbs", "climb"), ("improves", "improve")),
}
DOWN_VERBS = {
    -1.0: (("plunges", "plunge"), ("slumps", "slump"), ("collapses", "collapse"), ("tumbles", "tumble"), ("sinks", "sink")),
    -0.5: (("slips", "slip"), ("dips", "dip"), ("eases", "ease"), ("declines", "decline"), ("softens", "soften")),
}

BROKERS = ("CITIC Securities", "Huatai Securities", "Guotai Junan", "CICC", "Haitong Securities", "GF Securities",
           "China Merchants Securities", "Shenwan Hongyuan", "Everbright Securities", "Industrial Securities")
NEWS_SOURCES = ("Securities Times", "China Securities Journal", "Shanghai Securities News", "Securities Daily",
                "Caixin", "Yicai", "21st Century Business Herald", "Sina Finance", "Eastmoney", "Cailian Press")
REGIONS = ("Jiangsu", "Zhejiang", "Guangdong", "Sichuan", "Shandong", "Hubei", "Anhui", "Fujian", "Henan", "Shaanxi")
PRODUCTS = ("flagship product line", "new-generation platform", "core module", "key component", "pilot project",
            "overseas subsidiary", "production base", "R&D centre", "digital business", "export segment")
PERIODS = ("Q1", "the first half", "Q3", "the full year", "the first three quarters")

# Company texts: (kind, title, body) per sentiment level.
COMPANY = {
    1.0: (
        ("announcement", "{name} net profit {up} {pct}% in {q}", "{name} ({code}) said net profit attributable to shareholders rose {pct}% year on year in {q}, well above market expectations, as gross margin widened by {pct2} percentage points."),
        ("announcement", "{name} wins CNY {amt}00 million contract", "{name} ({code}) has signed a supply contract worth about CNY {amt}00 million, equal to {pct}% of last year's revenue. Deliveries start next quarter."),
        ("news", "{name} shares in focus after blockbuster order from {region}", "A record order from a {region} customer lifts {name}'s backlog by {pct}%. Management called it a turning point for the {product}."),
        ("research", "{broker} upgrades {name} to Buy, target CNY {target}", "{broker} raised its rating on {name} to Buy and set a target price of CNY {target}, citing {pct}% earnings growth and a stronger {product}."),
        ("announcement", "{name} controlling shareholder to boost stake by up to {pct2}%", "The controlling shareholder of {name} ({code}) plans to buy up to {pct2}% of the company's shares over the next six months, signalling confidence in its outlook."),
        ("announcement", "{name} unveils CNY {amt}00 million share buyback", "{name} will repurchase shares worth up to CNY {amt}00 million for cancellation; the board said the shares are deeply undervalued."),
        ("news", "Regulator approves {name}'s {product}, earnings to {up_base}", "{name} received approval for its {product}, which analysts expect to lift profit by {pct}% next year and strengthen its position in {sector}."),
    ),
    0.5: (
        ("announcement", "{name} {q} profit {up} {pct2}%", "{name} ({code}) reported a {pct2}% increase in net profit for {q}, broadly in line with guidance, helped by steady demand in {sector}."),
        ("news", "{name} expands capacity at {region} plant", "{name} plans to expand its {region} production base by {pct2}%, a move that should support sales of its {product}."),
        ("research", "{broker} initiates {name} at Outperform", "{broker} started coverage of {name} with an Outperform rating, expecting margins in its {product} to {up_base} gradually."),
        ("announcement", "{name} raises cash dividend", "{name} ({code}) proposed a higher cash dividend of CNY {div} per 10 shares, up {pct2}% from last year."),
        ("news", "{name} secures new orders as {sector} demand {up}", "Orders at {name} picked up this month, with the company saying demand for its {product} {up} across {region}."),
        ("announcement", "{name} receives CNY {small} million government subsidy", "{name} ({code}) disclosed a government subsidy of CNY {small} million related to its {product}, which will count as other income."),
    ),
    0.0: (
        ("announcement", "{name} notice of annual general meeting", "{name} ({code}) will hold its annual general meeting on the {n}th; shareholders will vote on routine resolutions."),
        ("announcement", "{name} board meeting resolutions", "The board of {name} ({code}) approved {n} routine resolutions, including the appointment of an auditor and internal control reports."),
        ("announcement", "{name} investor relations activity record", "{name} hosted {n} institutional investors for a site visit; discussions covered the {product} and the {sector} outlook."),
        ("news", "{name} results in line with expectations", "{name} ({code}) reported {q} results roughly in line with consensus; analysts kept their forecasts unchanged."),
        ("announcement", "{name} completes bond issuance", "{name} completed the issuance of CNY {amt}00 million of corporate bonds at a coupon of {coupon}%, to refinance existing debt."),
        ("announcement", "{name} changes securities representative", "{name} ({code}) appointed a new securities affairs representative; the change does not affect operations."),
        ("research", "{broker} maintains Neutral on {name}", "{broker} kept its Neutral rating on {name}, saying the {product} is developing as expected and valuation is fair."),
        ("announcement", "{name} to hold {q} results briefing on the {n}th", "{name} ({code}) will hold an online briefing on its {q} results; management will answer investor questions."),
        ("announcement", "{name} releases {q} report", "{name} ({code}) published its {q} report; revenue and profit were little changed from a year earlier."),
        ("news", "{name} signs cooperation memorandum in {region}", "{name} signed a non-binding memorandum with the {region} government on its {product}; no amounts were disclosed."),
        ("announcement", "{name} {n} million restricted shares become tradable", "About {n} million restricted shares of {name} ({code}) will become tradable, as scheduled at the IPO."),
    ),
    -0.5: (
        ("announcement", "{name} {q} profit {down} {pct2}%", "{name} ({code}) said net profit fell {pct2}% in {q} as raw material costs rose and demand in {sector} stayed soft."),
        ("announcement", "{name} shareholder plans to cut stake by up to {small_pct}%", "A shareholder holding more than 5% of {name} ({code}) plans to reduce its holding by up to {small_pct}% within three months."),
        ("research", "{broker} downgrades {name} to Neutral", "{broker} cut {name} to Neutral, warning that margins in its {product} may {down_base} further."),
        ("news", "{name} delays {region} project", "{name} postponed its {region} project by about {n} months, citing weaker orders for its {product}."),
        ("news", "Price war weighs on {name}", "Competition in {sector} intensified, and {name} cut prices on its {product} by about {pct2}%."),
    ),
    -1.0: (
        ("announcement", "{name} warns of {q} loss", "{name} ({code}) expects a net loss of up to CNY {amt}00 million for {q}, reversing a profit a year earlier, after large impairments."),
        ("announcement", "{name} under CSRC investigation", "{name} ({code}) received a notice of investigation from the China Securities Regulatory Commission over suspected disclosure violations."),
        ("news", "{name} profit {down} {pct}% as orders dry up", "Net profit at {name} fell {pct}% year on year, and the company said orders for its {product} could {down_base} further."),
        ("announcement", "{name} loses major customer contract", "{name} said a key customer terminated a contract worth CNY {amt}00 million, about {pct}% of annual revenue."),
        ("announcement", "{name} auditor issues qualified opinion", "The auditor of {name} ({code}) issued a qualified opinion on its annual report, citing doubts about receivables of CNY {amt}00 million."),
        ("news", "{name} recalls {product} over defects", "{name} will recall its {product} after quality problems were found; the company expects costs of CNY {small} million."),
        ("research", "{broker} cuts {name} to Sell, target CNY {target}", "{broker} downgraded {name} to Sell with a target of CNY {target}, expecting earnings to {down_base} by {pct}%."),
    ),
}

# Sector texts (symbol ""): they move every stock of {sector}.
SECTOR = {
    1.0: ("State Council unveils support plan for {sector}", "A new policy package for {sector} includes tax relief and CNY {amt}0 billion of funding; analysts expect profits across the sector to {up_base}."),
    0.5: ("{sector} demand {up} as prices recover", "Industry data show {sector} prices up {pct2}% this month, and several companies reported better orders."),
    0.0: ("{sector} association publishes monthly statistics", "Output in {sector} was roughly flat month on month, in line with seasonal patterns."),
    -0.5: ("{sector} faces softer orders, survey shows", "A survey of {sector} companies points to weaker orders and inventories up {pct2}%."),
    -1.0: ("Regulators tighten rules on {sector}", "New rules restrict expansion in {sector} and raise compliance costs; analysts expect sector earnings to {down_base}."),
}

# Macro texts (symbol ""): they move the whole market.
MACRO = {
    1.0: ("PBOC cuts reserve requirement ratio by {bp} bp", "The People's Bank of China cut banks' reserve requirement ratio by {bp} basis points, releasing about CNY {amt}00 billion of liquidity."),
    0.5: ("Manufacturing PMI {up} to {pmi}", "The official manufacturing PMI rose to {pmi}, above expectations, with new orders improving."),
    0.0: ("NBS releases monthly CPI data", "Consumer prices rose {small_pct}% year on year, in line with forecasts."),
    -0.5: ("Export value {down} {pct2}% in latest month", "Customs data show exports fell {pct2}% year on year as overseas demand weakened."),
    -1.0: ("Trade tensions escalate as new tariffs announced", "New tariffs on Chinese goods worth USD {amt}0 billion were announced; strategists warn of a broad sell-off."),
}

# Extra sentences appended to bodies, by sign of the sentiment (0 = neutral filler).
OUTLOOK = {
    1: ("Management expects growth to continue next year.", "Several funds added to their positions, according to filings.",
        "Analysts raised their earnings forecasts after the news.", "The company said its order book is the strongest in years."),
    0: ("No further details were given.", "The company said operations are normal.", "Trading in the shares was not affected.",
        "The filing contains no forecast.", ""),
    -1: ("Analysts cut their forecasts after the news.", "The company did not rule out further provisions.",
         "Some institutional holders reduced positions, filings show.", "Management declined to give guidance."),
}

# Ways outlets dress a headline ({t} is the headline itself).
TITLE_STYLES = ("{t}", "{t}", "{t}", "{t}", "Flash | {t}", "Update: {t}", "{t} ({code})", "{sector} | {t}",
                "{t} - filing", "Market watch: {t}")
